"""The upkeep of per-workspace vector indexes (`repositories/vector_indexes.py`), as jobs.

When a document of a workspace becomes READY, `VectorIndexes.schedule` (in that same
transaction) queues a `vector_index` job if the workspace now needs its index built or
dropped (`IndexState.action`). The job (`VectorIndexes.upkeep`) reads the state again: a
build waits, re-queued every `BUSY_RECHECK_SECONDS`, while any of the workspace's documents is
still being ingested, so a bulk load into a workspace maintains no index while it runs and
builds one at its end; then it builds (`CREATE INDEX CONCURRENTLY`: searches and writes go
on) or drops the index. Until the index is valid the workspace's vector search is an exact
scan. A workspace that shrinks only by deletions keeps its index until its next ingestion
(harmless: below the threshold its search is exact, and an index costs upkeep only on writes).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.ingestion import queue
from rag_gql.repositories import vector_indexes
from rag_gql.repositories.search_sql import ExactScan
from rag_gql.repositories.vector_indexes import IndexAction

log = logging.getLogger(__name__)

BUSY_RECHECK_SECONDS = 10.0
"""How long a build waits before looking again at a workspace still being ingested."""


def exact_scan(settings: Settings) -> ExactScan:
    """The exact-scan threshold of the settings (the search's own, `RetrievalService`)."""
    return ExactScan(
        settings.exact_search_max_rows,
        settings.exact_search_max_share,
        settings.exact_search_share_max_rows,
    )


class VectorIndexes:
    """Schedules and runs the vector index jobs of workspaces (worker side)."""

    def __init__(self, *, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._exact = exact_scan(settings)

    async def schedule(self, session: AsyncSession, workspace_id: uuid.UUID) -> bool:
        """Queues the workspace's `vector_index` job in the caller's transaction (it runs after
        the commit) when its index is to be built or dropped; True when one was queued."""
        connection = await session.connection()
        raw: Any = (await connection.get_raw_connection()).driver_connection
        found = await vector_indexes.state(raw, workspace_id=workspace_id, exact=self._exact)
        if found.action is None:
            return False
        return await queue.defer_vector_index(session, workspace_id=workspace_id)

    async def upkeep(self, workspace_id: uuid.UUID) -> None:
        """The `vector_index` job: builds or drops the workspace's index as its state needs
        now; a build re-queued for later while the workspace is being ingested."""
        async with self._db.driver_transaction(workspace_id) as conn:
            found = await vector_indexes.state(conn, workspace_id=workspace_id, exact=self._exact)
        action = found.action
        if action is IndexAction.BUILD and found.busy:
            async with self._db.transaction(workspace_id) as session:
                await queue.defer_vector_index(
                    session, workspace_id=workspace_id, delay=BUSY_RECHECK_SECONDS
                )
            return
        if action is None:
            return
        started = time.monotonic()
        async with self._db.owner_connection() as owner:
            await self._apply(owner, workspace_id, action)
        log.info(
            "vector index of workspace %s: %s in %.1f s (threshold %d chunks)",
            workspace_id,
            action.value.lower(),
            time.monotonic() - started,
            found.threshold,
        )

    async def _apply(
        self, owner: asyncpg.Connection, workspace_id: uuid.UUID, action: IndexAction
    ) -> None:
        if action is IndexAction.BUILD:
            await vector_indexes.build(
                owner,
                workspace_id=workspace_id,
                maintenance_work_mem=self._settings.vector_index_build_memory,
            )
        else:
            await vector_indexes.drop(owner, workspace_id=workspace_id)
