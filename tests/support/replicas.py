"""Child processes of a deployment of several replicas: `rag-gql serve` and `rag-gql worker`
started as deployed (`python -m rag_gql.cli ...`), each its own interpreter, its output
appended to one log."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT = 90.0
"""Seconds a child may take to start (two cores shared with other work)."""


@dataclass
class Child:
    """A running `rag-gql` command; `url` is a server's base URL (None for a worker)."""

    process: asyncio.subprocess.Process
    url: str | None = None


def log_text(log: Path) -> str:
    """The children's output so far (for assertion messages)."""
    return log.read_text(errors="replace")


@asynccontextmanager
async def child(env: Mapping[str, str], log: Path, *args: str) -> AsyncIterator[Child]:
    """Runs `python -m rag_gql.cli ARGS` with `env`; kills it on the way out if it still runs
    (a test stops it itself when the way it stops matters)."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rag_gql.cli", *args, env=dict(env), stdout=out, stderr=out
        )
    try:
        yield Child(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def replica(env: Mapping[str, str], log: Path, port: int) -> AsyncIterator[Child]:
    """`rag-gql serve` on loopback `port`, yielded once `/healthz` answers 200.

    Raises:
        AssertionError: it exited or did not answer within `START_TIMEOUT` (with the log).
    """
    async with child(env, log, "serve", "--host", "127.0.0.1", "--port", str(port)) as server:
        server.url = f"http://127.0.0.1:{port}"
        await wait_healthy(server, log)
        yield server


async def wait_healthy(server: Child, log: Path) -> None:
    """Polls `server.url/healthz` until it answers 200 (asserts with the log otherwise)."""
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{server.url}/healthz")).status_code == 200:
                    return
            assert server.process.returncode is None, log_text(log)
            assert time.monotonic() < deadline, log_text(log)
            await asyncio.sleep(0.1)
