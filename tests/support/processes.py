"""Child processes for the benchmarks: `rag-gql serve` or the Ollama stand-in started as
deployed, each in its own interpreter, waited for until it answers, and stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx

from rag_gql.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def app_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any of the app's settings, then `settings`
    (names as environment variables) and PYTHONPATH set to the checkout. No operations
    listener (`METRICS_PORT=0`) unless `settings` give a port."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["METRICS_PORT"] = "0"
    env.update(settings)
    env["PYTHONPATH"] = str(ROOT)
    return env


async def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    """Polls `url` until it answers 200.

    Raises:
        RuntimeError: the process exited, or `seconds` passed.
    """
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def running(
    module_args: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Runs `python -m <module_args>` in `cwd` with its output in `log`; yields the process
    once `ready_url` answers 200, stops it (`stop`) on exit.

    Raises:
        RuntimeError: it exited or did not answer within `timeout` seconds (its log says why).
    """
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603, ASYNC220 - our own modules; returns at once
            [sys.executable, "-m", *module_args],
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_until_up(ready_url, process, timeout)
        yield process
    finally:
        await asyncio.to_thread(stop, process)
