"""Ingestion that stopped without an outcome is put back to work, and two runs of one document
cannot both write: the sweep of orphaned documents (in every workspace, under row-level
security), the replacement of stalled jobs, and fenced runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import pytest

from rag_gql.config import Settings
from rag_gql.errors import UpstreamUnavailable
from rag_gql.ingestion import queue
from rag_gql.ingestion.pipeline import IngestionPipeline
from rag_gql.ingestion.recovery import IngestRecovery
from rag_gql.providers.ollama import OllamaClient
from rag_gql.repositories import documents
from rag_gql.resources import Services, open_services
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.pdfs import long_page, make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect

AN_HOUR_AGO = "now() - interval '1 hour'"


async def upload(gql: GraphQLClient, token: str, topic: str, *, wait: bool = True) -> uuid.UUID:
    """Uploads a one-page PDF about `topic`; returns its id (READY unless not `wait`)."""
    response = await gql.upload(
        f"{topic}.pdf", make_pdf([long_page(topic, 8)]), token=token, wait=wait
    )
    document = response.json()["data"]["uploadDocument"]
    assert document["status"] == ("READY" if wait else "QUEUED"), document
    return uuid.UUID(document["id"])


async def jobs_of(conn: asyncpg.Connection, document_id: uuid.UUID) -> list[tuple[int, str]]:
    """`(id, status)` of the document's ingestion jobs, oldest first."""
    rows = await conn.fetch(
        "SELECT id, status FROM procrastinate_jobs WHERE lock = $1 ORDER BY id",
        queue.document_lock(document_id),
    )
    return [(row["id"], row["status"]) for row in rows]


async def state(conn: asyncpg.Connection, document_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT status, error, chunk_count, ingest_lease, ingest_recoveries,"
        " (SELECT count(*) FROM chunk WHERE document_id = d.id) AS chunks"
        " FROM document d WHERE id = $1",
        document_id,
    )


async def leave_unfinished(
    conn: asyncpg.Connection, document_id: uuid.UUID, *, changed: str = AN_HOUR_AGO, **values: Any
) -> None:
    """As a run whose last write failed leaves a document: EMBEDDING, part-way, its chunks
    rolled back, no job; `values` set other columns."""
    await conn.execute(
        "DELETE FROM procrastinate_jobs WHERE lock = $1", queue.document_lock(document_id)
    )
    await conn.execute("DELETE FROM chunk WHERE document_id = $1", document_id)
    assignments = "".join(f", {name} = {value}" for name, value in values.items())
    await conn.execute(
        "UPDATE document SET status = 'EMBEDDING', pages_done = 1, chunks_done = 2,"
        f" chunk_count = 0, updated_at = {changed}{assignments} WHERE id = $1",
        document_id,
    )


@asynccontextmanager
async def worker_side(settings: Settings) -> AsyncIterator[Services]:
    """The services of a process that runs no worker (jobs stay where the test puts them)."""
    async with open_services(settings, check_upstream=False) as services:
        yield services


def without_worker(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_in_process": False})


# --- the sweep of orphaned documents ---------------------------------------------------------


async def test_an_orphaned_document_is_queued_again_and_ends_ready(
    settings: Settings, inbox: Inbox
) -> None:
    quick = settings.model_copy(update={"worker_recovery_interval": 1})
    async with serve_client(quick) as gql, connect(settings) as conn:
        token = await sign_up(gql, inbox, "ada@example.com")
        orphan = await upload(gql, token, "gannets")
        recent = await upload(gql, token, "puffins")
        before = await state(conn, orphan)
        assert before is not None and before["chunks"] > 0
        await leave_unfinished(conn, orphan)
        await leave_unfinished(conn, recent, changed="now()")  # within INGEST_ORPHAN_GRACE

        done = await gql.wait_for_document(str(orphan), token=token, timeout=30)
        assert (done["status"], done["error"]) == ("READY", None)
        after = await state(conn, orphan)
        assert after is not None
        assert after["chunks"] == after["chunk_count"] == before["chunks"]
        assert after["ingest_lease"] == before["ingest_lease"] + 1  # one more run
        assert after["ingest_recoveries"] == 0  # READY: the count starts again
        untouched = await state(conn, recent)
        assert untouched is not None and untouched["status"] == "EMBEDDING"
        assert await jobs_of(conn, recent) == []


async def test_the_sweep_covers_every_workspace_and_spares_live_and_recent_documents(
    settings: Settings, inbox: Inbox
) -> None:
    async with serve_client(without_worker(settings)) as gql, connect(settings) as conn:
        ada = await sign_up(gql, inbox, "ada@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        orphan, queued, recent, marked = [
            await upload(gql, ada, topic, wait=False)
            for topic in ("gannets", "terns", "puffins", "auks")
        ]
        bob_orphan, bob_stuck = [
            await upload(gql, bob, topic, wait=False) for topic in ("herons", "egrets")
        ]
        for document_id in (orphan, bob_orphan):
            await leave_unfinished(conn, document_id)
        await leave_unfinished(conn, recent, changed="now()")
        await leave_unfinished(conn, marked, delete_requested_at="now()")
        await leave_unfinished(conn, bob_stuck, ingest_recoveries=settings.ingest_max_recoveries)
        await conn.execute(f"UPDATE document SET updated_at = {AN_HOUR_AGO} WHERE id = $1", queued)
        queued_jobs = await jobs_of(conn, queued)

        async with worker_side(settings) as services:
            recovery = IngestRecovery(settings=settings, db=services.db)
            # The scan runs as the application role, one workspace at a time, and leaves
            # the caller's scope as it found it.
            ada_workspace = await conn.fetchval(
                "SELECT workspace_id FROM document WHERE id = $1", orphan
            )
            async with services.db.transaction(ada_workspace) as session:
                found = await documents.unfinished_without_job(session, idle=60)
                scope = await session.connection()
                still = (
                    await scope.exec_driver_sql("SELECT current_setting('app.workspace_id')")
                ).scalar()
            assert sorted(d for _, d in found) == sorted([orphan, bob_orphan, marked, bob_stuck])
            assert still == str(ada_workspace)

            assert await recovery.sweep() == 4
            assert await recovery.sweep() == 0  # each was dealt with once

        for document_id in (orphan, bob_orphan):
            row = await state(conn, document_id)
            assert row is not None
            assert row["status"] == "QUEUED" and row["ingest_recoveries"] == 1
            assert (
                row["error"] == "its ingestion stopped without recording an outcome; queued again"
            )
            assert [status for _, status in await jobs_of(conn, document_id)] == ["todo"]
        stuck = await state(conn, bob_stuck)
        assert stuck is not None and stuck["status"] == "FAILED"
        times = settings.ingest_max_recoveries + 1
        assert stuck["error"] == (
            f"its ingestion stopped without recording an outcome, {times} times in a row; "
            "reindex the document to try again"
        )
        assert await jobs_of(conn, bob_stuck) == []
        assert await state(conn, marked) is None  # marked for deletion: deleted
        assert await jobs_of(conn, queued) == queued_jobs  # its job is waiting: left alone
        untouched = await state(conn, recent)
        assert untouched is not None and untouched["status"] == "EMBEDDING"

        # Queued again, it is ingested as any upload.
        async with serve_client(settings) as served:
            done = await served.wait_for_document(str(orphan), token=ada, timeout=30)
        assert (done["status"], done["error"]) == ("READY", None)


# --- stalled jobs -----------------------------------------------------------------------------


async def _stall(conn: asyncpg.Connection, document_id: uuid.UUID) -> int:
    """Makes the document's job run by a worker whose heartbeat stopped an hour ago."""
    worker = await conn.fetchval(
        f"INSERT INTO procrastinate_workers (last_heartbeat) VALUES ({AN_HOUR_AGO}) RETURNING id"
    )
    [(job_id, _)] = await jobs_of(conn, document_id)
    await conn.execute(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = $2 WHERE id = $1",
        job_id,
        worker,
    )
    await conn.execute("UPDATE document SET status = 'EMBEDDING' WHERE id = $1", document_id)
    return int(job_id)


async def test_a_stalled_job_is_replaced_unless_its_run_still_holds_the_document(
    settings: Settings, inbox: Inbox
) -> None:
    async with serve_client(without_worker(settings)) as gql, connect(settings) as conn:
        token = await sign_up(gql, inbox, "ada@example.com")
        lost = await upload(gql, token, "gannets", wait=False)
        held = await upload(gql, token, "terns", wait=False)
        lost_job, held_job = await _stall(conn, lost), await _stall(conn, held)

        async def ingest(document_id: uuid.UUID, workspace_id: uuid.UUID, final: bool) -> None:
            raise AssertionError("no job runs here")

        async with worker_side(settings) as services, connect(settings) as run:
            recovery = IngestRecovery(settings=settings, db=services.db.without_timeouts())
            assert settings.database_url is not None
            app = queue.build_queue(settings, settings.database_url, ingest, recovery)
            async with app.open_async():
                # A transaction of the held document's run is open: the run is alive.
                async with run.transaction():
                    await run.execute("SELECT FROM document WHERE id = $1 FOR KEY SHARE", held)
                    assert await queue.recover_stalled_jobs(app, settings, recovery) == 1
                    assert await jobs_of(conn, held) == [(held_job, "doing")]
                assert await queue.recover_stalled_jobs(app, settings, recovery) == 1

        for document_id, job_id in ((lost, lost_job), (held, held_job)):
            jobs = await jobs_of(conn, document_id)
            assert jobs[0] == (job_id, "failed") and [s for _, s in jobs[1:]] == ["todo"], jobs
            row = await state(conn, document_id)
            assert row is not None and row["status"] == "QUEUED"
            assert row["error"] == "its worker stopped responding; queued again"

        async with serve_client(settings) as served:
            done = await served.wait_for_document(str(lost), token=token, timeout=30)
        assert done["status"] == "READY"


# --- fenced runs ------------------------------------------------------------------------------


class Gate:
    """An Ollama client whose first `embed` call waits for `release` (then fails, with
    `fail`): a run whose worker stalls in the middle of the document."""

    def __init__(self, inner: OllamaClient, *, fail: bool) -> None:
        self._inner = inner
        self._fail = fail
        self._first = True
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def embed_model(self) -> str:
        return self._inner.embed_model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self._first:
            self._first = False
            self.entered.set()
            await self.release.wait()
            if self._fail:
                raise UpstreamUnavailable("Ollama is unreachable")
        return await self._inner.embed(list(texts))


def _pipeline(services: Services, settings: Settings, ollama: Any) -> IngestionPipeline:
    return IngestionPipeline(
        settings=settings,
        db=services.db.without_timeouts(),
        ollama=cast(OllamaClient, ollama),
        metrics=services.metrics,
    )


@pytest.mark.parametrize(
    ("fail", "final"),
    [(False, False), (True, False), (True, True)],
    ids=["it-resumes", "it-fails-to-be-retried", "it-fails-for-good"],
)
async def test_an_older_run_that_ends_last_writes_nothing(
    settings: Settings, inbox: Inbox, fail: bool, final: bool
) -> None:
    async with serve_client(without_worker(settings)) as gql, connect(settings) as conn:
        token = await sign_up(gql, inbox, "ada@example.com")
        document_id = await upload(gql, token, "gannets", wait=False)
        workspace_id = await conn.fetchval(
            "SELECT workspace_id FROM document WHERE id = $1", document_id
        )

        async with worker_side(settings) as services:
            gate = Gate(services.ollama, fail=fail)
            older = _pipeline(services, settings, gate)
            newer = _pipeline(services, settings, services.ollama)
            try:
                # The older run stops in the middle, its transaction open; the recovery
                # starts a newer one, which finishes.
                first = asyncio.create_task(older.run(document_id, workspace_id, final))
                async with asyncio.timeout(30):
                    await gate.entered.wait()
                await newer.run(document_id, workspace_id, False)
                ready = await state(conn, document_id)
                assert ready is not None and ready["status"] == "READY"
                chunks = await conn.fetch(
                    "SELECT id, ordinal FROM chunk WHERE document_id = $1", document_id
                )

                # Then the older one goes on: it stops at its next write, having written nothing.
                gate.release.set()
                async with asyncio.timeout(30):
                    await first  # and raises nothing: no retry of a run overtaken
            finally:
                older.close()
                newer.close()

        after = await state(conn, document_id)
        assert after is not None
        assert (after["status"], after["error"]) == ("READY", None)
        assert after["chunks"] == after["chunk_count"] == len(chunks) > 0
        assert (
            await conn.fetch("SELECT id, ordinal FROM chunk WHERE document_id = $1", document_id)
            == chunks
        )
        assert sorted(row["ordinal"] for row in chunks) == list(range(len(chunks)))
