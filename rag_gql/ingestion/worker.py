"""An ingestion worker: the job queue's consumer, in `rag-gql serve` or `rag-gql worker`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import procrastinate

from rag_gql.ingestion import queue
from rag_gql.ingestion.pipeline import IngestionPipeline
from rag_gql.ingestion.recovery import IngestRecovery
from rag_gql.ingestion.vector_indexes import VectorIndexes
from rag_gql.resources import Services

log = logging.getLogger(__name__)

CONNECTIONS_PER_JOB = 2
"""Pool connections a running ingestion job holds: its chunks' transaction and its progress."""


@asynccontextmanager
async def ingestion_worker(
    services: Services, *, name: str | None = None
) -> AsyncIterator[procrastinate.App]:
    """Runs a worker on `services`' database and Ollama until the block exits.

    It recovers stalled jobs and orphaned documents as it starts and every
    `WORKER_RECOVERY_INTERVAL` seconds (`ingestion.recovery`). On exit the worker stops taking
    jobs, gives running ones `SHUTDOWN_GRACE` seconds, then stops the text-extraction
    processes. Yields the procrastinate app.
    """
    settings = services.settings
    assert settings.database_url is not None
    needed = CONNECTIONS_PER_JOB * settings.worker_concurrency
    pool = settings.db_pool_size + settings.db_max_overflow
    if pool <= needed:
        log.warning(
            "DB_POOL_SIZE + DB_MAX_OVERFLOW (%d) leave no connection beside %d ingestion "
            "jobs at once (WORKER_CONCURRENCY=%d, %d connections each): jobs and requests "
            "will wait for the pool (SERVER_BUSY). Raise the pool or lower the concurrency.",
            pool,
            settings.worker_concurrency,
            settings.worker_concurrency,
            CONNECTIONS_PER_JOB,
        )
    # Its transactions last as long as a document's embedding: free of the request timeouts.
    indexes = VectorIndexes(settings=settings, db=services.db.without_timeouts())
    pipeline = IngestionPipeline(
        settings=settings,
        db=services.db.without_timeouts(),
        ollama=services.ollama,
        metrics=services.metrics,
        vector_indexes=indexes,
    )
    recovery = IngestRecovery(settings=settings, db=services.db.without_timeouts())
    app = queue.build_queue(
        settings, settings.database_url, pipeline.run, recovery, vector_index=indexes.upkeep
    )
    worker_name = name or f"{socket.gethostname()}-{os.getpid()}"
    try:
        async with app.open_async():
            task = asyncio.create_task(queue.run_worker(app, settings, recovery, name=worker_name))
            try:
                yield app
            finally:
                await queue.stop_worker(task)
    finally:
        await asyncio.to_thread(pipeline.close)
