"""The durable job queue: procrastinate on the application's own PostgreSQL.

Jobs are rows in `procrastinate_jobs`. `defer_ingest` inserts one inside the caller's
transaction (through procrastinate's own `procrastinate_defer_jobs_v1` SQL function), so a
document row and its job commit together or not at all: no document is ever QUEUED without
a job. Workers (`run_worker`: in `rag-gql serve` by default, or `rag-gql worker` anywhere that
reaches the database) take jobs with `SELECT ... FOR UPDATE SKIP LOCKED`, wake on `LISTEN/NOTIFY`,
and beat a heartbeat; a periodic task hands the jobs of a worker whose heartbeat stopped (a
`kill -9`, a lost machine) back to the queue, following procrastinate's "retry stalled jobs"
recipe. See https://procrastinate.readthedocs.io/ (howto: "Retry stalled jobs").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

import procrastinate
from procrastinate.job_context import JobContext
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.errors import UpstreamError, UpstreamUnavailable

log = logging.getLogger(__name__)

INGEST_TASK = "ingest_document"
"""procrastinate task name of document ingestion (kwargs: `document_id`, `workspace_id`)."""

RECOVER_TASK = "retry_stalled_jobs"
QUEUE = "ingest"

IngestHandler = Callable[[uuid.UUID, uuid.UUID, bool], Awaitable[None]]
"""`(document_id, workspace_id, final_attempt)`: runs one ingestion job."""


def conninfo(database_url: str) -> str:
    """A libpq URI (what psycopg, and so procrastinate, takes) for a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def document_lock(document_id: uuid.UUID) -> str:
    """The procrastinate lock of a document's jobs: one at a time, at most one waiting."""
    return f"document:{document_id}"


_FAIR_PRIORITY = text(
    "SELECT least("
    "  coalesce((SELECT max(priority) FROM procrastinate_jobs WHERE queue_name = :queue"
    "    AND task_name = :task AND status = 'todo'"
    "    AND (scheduled_at IS NULL OR scheduled_at <= now())), 0),"
    "  (SELECT min(priority) - 1 FROM procrastinate_jobs WHERE queue_name = :queue"
    "    AND task_name = :task AND status = 'todo' AND args->>'workspace_id' = :workspace)"
    ")"
)
"""The priority of a new ingestion job: as the next job to be taken (the highest priority
due), or one below its workspace's last waiting job, whichever is lower."""


async def defer_ingest(
    session: AsyncSession, *, document_id: uuid.UUID, workspace_id: uuid.UUID
) -> bool:
    """Queues the ingestion of a document in the caller's transaction.

    Fair between workspaces (self-clocked fair queueing on procrastinate's `priority`:
    workers take the highest first, then the oldest): a new job is given the priority of the
    job that would be taken next, or one below its workspace's last waiting job when that is
    lower. So each workspace's waiting jobs get consecutive priorities, the first of a
    workspace with none waiting ranks with the head of the queue, and jobs are taken
    round-robin by workspace: one that queued thousands delays another's upload by at most
    one job per workspace with jobs waiting, with any worker count and concurrency.

    Returns False when a job for this document is already waiting (its queueing lock), which
    will do the same work.
    """
    args = json.dumps({"document_id": str(document_id), "workspace_id": str(workspace_id)})
    lock = document_lock(document_id)
    fair = await session.execute(
        _FAIR_PRIORITY, {"queue": QUEUE, "task": INGEST_TASK, "workspace": str(workspace_id)}
    )
    priority = int(fair.scalar_one())
    statement = text(
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW("
        ":queue, :task, :priority, :lock, :lock, CAST(:args AS jsonb), NULL"
        ")::procrastinate_job_to_defer_v1])"
    )
    try:
        async with session.begin_nested():
            await session.execute(
                statement,
                {
                    "queue": QUEUE,
                    "task": INGEST_TASK,
                    "priority": priority,
                    "lock": lock,
                    "args": args,
                },
            )
    except IntegrityError:  # procrastinate_jobs_queueing_lock_idx: one is already waiting
        return False
    return True


def build_queue(settings: Settings, database_url: str, ingest: IngestHandler) -> procrastinate.App:
    """A procrastinate app on `database_url` whose tasks call `ingest`.

    Ingestion retries on `UpstreamUnavailable`/`UpstreamError` (Ollama down or failing) with
    exponential backoff, `INGEST_MAX_ATTEMPTS` runs in all; `ingest` is told when a run is the
    last one, so that it records FAILED with the upstream's message instead of raising.
    """
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(database_url), kwargs={"application_name": "rag-gql worker"}
    )
    app = procrastinate.App(connector=connector)
    retries = settings.ingest_max_attempts - 1
    strategy = procrastinate.RetryStrategy(
        max_attempts=retries,
        exponential_wait=settings.ingest_retry_base_wait,
        retry_exceptions={UpstreamUnavailable, UpstreamError},
    )

    @app.task(name=INGEST_TASK, queue=QUEUE, retry=strategy, pass_context=True)
    async def ingest_document(context: JobContext, document_id: str, workspace_id: str) -> None:
        assert context.job is not None
        final = context.job.attempts >= retries
        await ingest(uuid.UUID(document_id), uuid.UUID(workspace_id), final)

    # croniter: seconds are the sixth field.
    @app.periodic(cron=f"* * * * * */{settings.worker_recovery_interval}")
    @app.task(name=RECOVER_TASK, queue=QUEUE, queueing_lock=RECOVER_TASK, pass_context=True)
    async def retry_stalled_jobs(context: JobContext, timestamp: int) -> None:
        await recover_stalled_jobs(app, settings)

    return app


async def recover_stalled_jobs(app: procrastinate.App, settings: Settings) -> int:
    """Puts back in the queue the jobs of workers whose heartbeat stopped; returns how many."""
    stalled = await app.job_manager.get_stalled_jobs(
        seconds_since_heartbeat=settings.worker_stalled_timeout
    )
    count = 0
    for job in stalled:
        log.warning(
            "job %s (%s) was left running by a dead worker: retrying", job.id, job.task_name
        )
        await app.job_manager.retry_job(job)
        count += 1
    return count


async def queue_depth(session: AsyncSession) -> int:
    """Jobs waiting or running (the `rag_gql_ingest_queue_depth` metric)."""
    statement = text("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
    return int((await session.execute(statement)).scalar_one())


async def run_worker(app: procrastinate.App, settings: Settings, *, name: str) -> None:
    """Runs a worker until cancelled; cancelling lets running jobs finish for
    `SHUTDOWN_GRACE` seconds, then aborts them (their transactions roll back, and a
    surviving worker retries them once their heartbeat is stale).
    """
    await recover_stalled_jobs(app, settings)
    await app.run_worker_async(
        name=name,
        queues=[QUEUE],
        concurrency=settings.worker_concurrency,
        install_signal_handlers=False,
        update_heartbeat_interval=settings.worker_heartbeat_interval,
        stalled_worker_timeout=settings.worker_stalled_timeout,
        shutdown_graceful_timeout=settings.shutdown_grace,
        delete_jobs="successful",
    )


async def stop_worker(task: asyncio.Task[None]) -> None:
    """Cancels a `run_worker` task and waits for it to wind down."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
