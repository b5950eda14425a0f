"""`kill -9` in the middle of ingesting, with real processes: the server (API + in-process
worker) dies, then a `rag-gql worker` dies, and a third process finishes the job. The
document is never visible with part of its chunks, and ends with each chunk exactly once."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx

from rag_gql.config import Settings
from rag_gql.ingestion.queue import RECOVER_TASK
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import long_page, make_pdf
from tests.support.serving import SMALL_STEPS, environment, free_port
from tests.support.smtp import Inbox
from tests.support.sql import connect

PAGES = 30
START_TIMEOUT = 60.0


def _text(log: Path) -> str:
    """The children's output so far (for assertion messages)."""
    return log.read_text(errors="replace")


def _env(settings: Settings) -> dict[str, str]:
    return environment(settings, **SMALL_STEPS)


@asynccontextmanager
async def child(
    env: dict[str, str], log: Path, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Runs `python -m rag_gql.cli ARGS`; kills it on the way out if it still runs."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rag_gql.cli", *args, env=env, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def document_state(conn: asyncpg.Connection) -> tuple[str, int, int]:
    """(status, pages_done, visible chunks) of the only document."""
    row = await conn.fetchrow(  # one statement: one snapshot
        "SELECT status, pages_done, (SELECT count(*) FROM chunk) AS chunks FROM document"
    )
    assert row is not None
    return row["status"], row["pages_done"], row["chunks"]


async def wait_until_midway(conn: asyncpg.Connection, log: Path, since: float) -> None:
    """Waits until the job has embedded a few page batches (and not finished)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        status, pages_done, chunks = await document_state(conn)
        updated = await conn.fetchval("SELECT extract(epoch FROM updated_at) FROM document")
        if status == "EMBEDDING" and pages_done >= 6 and updated >= since:
            assert status != "READY"
            assert chunks == 0, "chunks are visible before the document is READY"
            return
        assert status != "READY", "finished before it could be interrupted"
        assert time.monotonic() < deadline, _text(log)
        await asyncio.sleep(0.02)


async def test_kill_9_mid_ingest_finishes_exactly_once(
    inbox: Inbox, ollama: StandinState, settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings)
    log = tmp_path / "processes.log"
    port = free_port()
    ollama.delay = 0.15  # each embedding request takes a while: the job runs for seconds
    pdf = make_pdf([long_page(f"cliff{n}", 10) for n in range(PAGES)])

    async with connect(settings) as conn:
        # 1. The server takes the upload, and dies under kill -9 while embedding it.
        serve_args = ("serve", "--host", "127.0.0.1", "--port", str(port))
        async with child(env, log, *serve_args) as server:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=30) as http:
                deadline = time.monotonic() + START_TIMEOUT
                while True:
                    try:
                        if (await http.get(f"{base}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert server.returncode is None, _text(log)
                    assert time.monotonic() < deadline, _text(log)
                    await asyncio.sleep(0.1)
                gql = GraphQLClient(http, base)
                token = await sign_up(gql, inbox, "ada@example.com")
                started = time.time()
                response = await gql.upload("cliffs.pdf", pdf, token=token, wait=False)
                assert response.json()["data"]["uploadDocument"]["status"] == "QUEUED"
            await wait_until_midway(conn, log, started)
            server.send_signal(signal.SIGKILL)
            assert await server.wait() == -signal.SIGKILL
        status, _, chunks = await document_state(conn)
        assert (status, chunks) == ("EMBEDDING", 0), "the dead transaction left nothing"

        # 2. A worker picks the job up once the dead one's heartbeat is stale; kill it too.
        restarted = time.time()
        async with child(env, log, "worker") as worker:
            await wait_until_midway(conn, log, restarted)
            worker.send_signal(signal.SIGKILL)
            assert await worker.wait() == -signal.SIGKILL
        assert (await document_state(conn))[2] == 0

        # 3. Another worker finishes it.
        async with child(env, log, "worker") as worker:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                status, _, chunks = await document_state(conn)
                if status == "READY":
                    break
                assert chunks == 0, "chunks are visible before the document is READY"
                assert time.monotonic() < deadline, _text(log)
                await asyncio.sleep(0.05)
            worker.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await worker.wait() == 0, _text(log)

        document = await conn.fetchrow("SELECT chunk_count, pages_done, error FROM document")
        assert document is not None
        assert (document["pages_done"], document["error"]) == (PAGES, None)
        rows = await conn.fetch("SELECT ordinal, page, char_start FROM chunk")
        assert len(rows) == document["chunk_count"] > PAGES
        assert sorted(r["ordinal"] for r in rows) == list(range(len(rows))), "no duplicates"
        assert len({(r["page"], r["char_start"]) for r in rows}) == len(rows)
        assert {r["page"] for r in rows} == set(range(1, PAGES + 1))
        # (The recovery task's periodic job may be queued at any time: not a leftover.)
        left = await conn.fetch(
            "SELECT task_name, status, scheduled_at FROM procrastinate_jobs"
            " WHERE status IN ('todo', 'doing') AND task_name <> $1",
            RECOVER_TASK,
        )
        assert [(r["task_name"], r["status"]) for r in left] == []
