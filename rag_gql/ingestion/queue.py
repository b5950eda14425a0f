"""The durable job queue: procrastinate on the application's own PostgreSQL.

Jobs are rows in `procrastinate_jobs`. `defer_ingest` inserts one inside the caller's
transaction (through procrastinate's own `procrastinate_defer_jobs_v1` SQL function), so a
document row and its job commit together or not at all: no document is ever QUEUED without
a job. Workers (`run_worker`: in `rag-gql serve` by default, or `rag-gql worker` anywhere that
reaches the database) take jobs with `SELECT ... FOR UPDATE SKIP LOCKED`, wake on `LISTEN/NOTIFY`,
and beat a heartbeat. A periodic task (`RECOVER_TASK`, also run as a worker starts) puts back
to work what was left behind:

- stalled jobs, those of a worker whose heartbeat stopped (a `kill -9`, a lost machine, or a
  live worker whose event loop is blocked): procrastinate's "retry stalled jobs" recipe, except
  that an ingestion job is ended `failed` and its document queued again with a new job
  (`Recovery.replace_stalled`). The stalled run may still be alive, and so run beside the new
  one: fencing, not the heartbeat, keeps them apart (each run takes a new token on the
  document, `documents.start_run`, and writes only while it is still its own), and the new job
  has its own row, which the old run's end cannot finish or delete.
- unfinished documents with no job (`Recovery.sweep`): a run whose last write failed.

See https://procrastinate.readthedocs.io/ (howto: "Retry stalled jobs").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import procrastinate
from procrastinate.job_context import JobContext
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.db.models import DocumentStatus
from rag_gql.errors import UpstreamError, UpstreamUnavailable
from rag_gql.repositories import documents

log = logging.getLogger(__name__)

INGEST_TASK = "ingest_document"
"""procrastinate task name of document ingestion (kwargs: `document_id`, `workspace_id`)."""

RECOVER_TASK = "retry_stalled_jobs"
"""procrastinate task name of the recovery of stalled jobs and unfinished documents."""
VECTOR_INDEX_TASK = "vector_index"
"""procrastinate task name of a workspace's vector index upkeep (kwargs: `workspace_id`)."""
QUEUE = "ingest"

IngestHandler = Callable[[uuid.UUID, uuid.UUID, bool], Awaitable[None]]
"""`(document_id, workspace_id, final_attempt)`: runs one ingestion job."""
VectorIndexHandler = Callable[[uuid.UUID], Awaitable[None]]
"""`(workspace_id)`: builds or drops the workspace's vector index as it needs."""


class Recovery(Protocol):
    """What the recovery task does about documents (`ingestion.recovery.IngestRecovery`)."""

    async def replace_stalled(
        self, job_id: int, *, document_id: uuid.UUID, workspace_id: uuid.UUID
    ) -> bool:
        """Ends the stalled ingestion job `job_id` and queues its document again with a new
        job; False when the job was no longer running."""

    async def sweep(self) -> int:
        """Queues again (or fails) the unfinished documents with no job; returns how many."""


def conninfo(database_url: str) -> str:
    """A libpq URI (what psycopg, and so procrastinate, takes) for a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def vector_index_lock(workspace_id: uuid.UUID) -> str:
    """The procrastinate lock of a workspace's vector index jobs: one at a time, at most one
    waiting."""
    return f"vector-index:{workspace_id}"


async def defer_vector_index(
    session: AsyncSession, *, workspace_id: uuid.UUID, delay: float = 0.0
) -> bool:
    """Queues the upkeep of a workspace's vector index in the caller's transaction, to run
    `delay` seconds after it commits at the earliest; False when one is already waiting."""
    return await _defer(
        session,
        task=VECTOR_INDEX_TASK,
        lock=vector_index_lock(workspace_id),
        args={"workspace_id": str(workspace_id)},
        delay=delay,
    )


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
    fair = await session.execute(
        _FAIR_PRIORITY, {"queue": QUEUE, "task": INGEST_TASK, "workspace": str(workspace_id)}
    )
    priority = int(fair.scalar_one())
    return await _defer(
        session,
        task=INGEST_TASK,
        lock=document_lock(document_id),
        args={"document_id": str(document_id), "workspace_id": str(workspace_id)},
        priority=priority,
    )


_DEFER = text(
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW("
    ":queue, :task, :priority, :lock, :lock, CAST(:args AS jsonb),"
    " CASE WHEN CAST(:delay AS float8) > 0"
    " THEN now() + make_interval(secs => CAST(:delay AS float8)) END"
    ")::procrastinate_job_to_defer_v1])"
)


async def _defer(
    session: AsyncSession,
    *,
    task: str,
    lock: str,
    args: dict[str, str],
    priority: int = 0,
    delay: float = 0.0,
) -> bool:
    """Queues a job of `QUEUE` in the caller's transaction (`lock` as both its lock and its
    queueing lock), to run `delay` seconds after it commits at the earliest (0: at once);
    False when a job with that queueing lock is already waiting."""
    try:
        async with session.begin_nested():
            await session.execute(
                _DEFER,
                {
                    "queue": QUEUE,
                    "task": task,
                    "priority": priority,
                    "lock": lock,
                    "args": json.dumps(args),
                    "delay": delay,
                },
            )
    except IntegrityError:  # procrastinate_jobs_queueing_lock_idx: one is already waiting
        return False
    return True


async def requeue(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID,
    *,
    error: str | None = None,
    lease: int | None = None,
    **values: Any,
) -> bool:
    """Sets the document QUEUED (progress reset, `error` as the reason, `values` too) and
    queues its job, in the caller's transaction; False when the document is gone (or, with
    `lease`, a newer run started)."""
    found = await documents.set_state(
        session,
        workspace_id=workspace_id,
        document_id=document_id,
        lease=lease,
        status=DocumentStatus.QUEUED.value,
        pages_done=0,
        chunks_done=0,
        error=error,
        **values,
    )
    if found:
        await defer_ingest(session, document_id=document_id, workspace_id=workspace_id)
    return found


async def has_live_job(session: AsyncSession, *, document_id: uuid.UUID) -> bool:
    """Whether an ingestion job of the document waits or runs (`todo` or `doing`)."""
    statement = text(
        "SELECT EXISTS (SELECT FROM procrastinate_jobs"
        " WHERE lock = :lock AND status IN ('todo', 'doing'))"
    )
    result = await session.execute(statement, {"lock": document_lock(document_id)})
    return bool(result.scalar_one())


async def fail_running(session: AsyncSession, *, job_id: int) -> bool:
    """Ends a running (`doing`) job as `failed`, in the caller's transaction, through
    procrastinate's own `procrastinate_finish_job_v1`; False (and nothing done) when the job
    is gone or no longer running. Its row stays locked until the transaction ends."""
    status = await session.execute(
        text("SELECT status FROM procrastinate_jobs WHERE id = :id FOR UPDATE"), {"id": job_id}
    )
    if status.scalar_one_or_none() != "doing":
        return False
    await session.execute(
        text("SELECT procrastinate_finish_job_v1(:id, 'failed', false)"), {"id": job_id}
    )
    return True


def build_queue(
    settings: Settings,
    database_url: str,
    ingest: IngestHandler,
    recovery: Recovery,
    vector_index: VectorIndexHandler | None = None,
) -> procrastinate.App:
    """A procrastinate app on `database_url` whose tasks call `ingest`, `recovery` and
    `vector_index` (without one, vector index jobs do nothing).

    Ingestion retries on `UpstreamUnavailable`/`UpstreamError` (Ollama down or failing) with
    exponential backoff, `INGEST_MAX_ATTEMPTS` runs in all; `ingest` is told when a run is the
    last one, so that it records FAILED with the upstream's message instead of raising.
    Every `WORKER_RECOVERY_INTERVAL` seconds one worker recovers stalled jobs, then sweeps the
    unfinished documents (`recover`).
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

    @app.task(name=VECTOR_INDEX_TASK, queue=QUEUE)
    async def vector_index_upkeep(workspace_id: str) -> None:
        if vector_index is not None:
            await vector_index(uuid.UUID(workspace_id))

    # croniter: seconds are the sixth field.
    @app.periodic(cron=f"* * * * * */{settings.worker_recovery_interval}")
    @app.task(name=RECOVER_TASK, queue=QUEUE, queueing_lock=RECOVER_TASK, pass_context=True)
    async def retry_stalled_jobs(context: JobContext, timestamp: int) -> None:
        await recover(app, settings, recovery)

    return app


async def recover(app: procrastinate.App, settings: Settings, recovery: Recovery) -> int:
    """Recovers stalled jobs, then sweeps unfinished documents; returns how many of each were
    put back to work, together."""
    return await recover_stalled_jobs(app, settings, recovery) + await recovery.sweep()


async def recover_stalled_jobs(
    app: procrastinate.App, settings: Settings, recovery: Recovery
) -> int:
    """Puts back in the queue the jobs of workers whose heartbeat stopped for
    `WORKER_STALLED_TIMEOUT` seconds; returns how many.

    An ingestion job is replaced (`Recovery.replace_stalled`); any other is retried in place.
    """
    stalled = await app.job_manager.get_stalled_jobs(
        seconds_since_heartbeat=settings.worker_stalled_timeout
    )
    count = 0
    for job in stalled:
        assert job.id is not None
        log.warning(
            "job %s (%s) was left running by a worker that stopped beating its heartbeat: "
            "running it again",
            job.id,
            job.task_name,
        )
        if job.task_name == INGEST_TASK:
            kwargs = job.task_kwargs
            count += await recovery.replace_stalled(
                job.id,
                document_id=uuid.UUID(str(kwargs["document_id"])),
                workspace_id=uuid.UUID(str(kwargs["workspace_id"])),
            )
        else:
            await app.job_manager.retry_job(job)
            count += 1
    return count


async def queue_depth(session: AsyncSession) -> int:
    """Jobs waiting or running (the `rag_gql_ingest_queue_depth` metric)."""
    statement = text("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
    return int((await session.execute(statement)).scalar_one())


async def run_worker(
    app: procrastinate.App, settings: Settings, recovery: Recovery, *, name: str
) -> None:
    """Recovers (`recover`), then runs a worker until cancelled; cancelling lets running jobs
    finish for `SHUTDOWN_GRACE` seconds, then aborts them (their transactions roll back, and a
    surviving worker retries them once their heartbeat is stale).
    """
    await recover(app, settings, recovery)
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
