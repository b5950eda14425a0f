"""Puts back to work the documents whose ingestion stopped without an outcome (worker side).

Two ways a document is left unfinished (QUEUED, PARSING, EMBEDDING, or marked for deletion):

- its job stalled: the worker running it stopped beating its heartbeat (killed, lost, or its
  event loop blocked). `replace_stalled` ends that job `failed` and queues the document again
  with a new job, in one transaction. The old run may still be alive: fencing stops it at its
  next write (`ingestion.pipeline`), and its job being ended, it cannot finish the new one.
- it is orphaned: no ingestion job waits for it or runs it (`todo` or `doing`), and it has
  not changed for `INGEST_ORPHAN_GRACE` seconds. Jobs and documents commit together, so
  this means a run's last write failed (its database connection broke while the worker
  recorded READY or FAILED), or an operator deleted the job. `sweep` finds them in every
  workspace, under row-level security (`documents.unfinished_without_job`), then checks
  each again in its own workspace's transaction with the row locked.

Either way a document is queued again with its reason as `error`, at most
`INGEST_MAX_RECOVERIES` times in a row (the count starts again when it ends READY or
FAILED); one more and it is FAILED with a message saying so. A document marked for deletion
is deleted instead.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document, DocumentStatus
from rag_gql.ingestion import queue
from rag_gql.repositories import documents

log = logging.getLogger(__name__)

STALLED = "its worker stopped responding"
ORPHANED = "its ingestion stopped without recording an outcome"


class IngestRecovery:
    """`queue.Recovery` on the application's database (`db`: the worker's, without request
    timeouts)."""

    def __init__(self, *, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db

    async def replace_stalled(
        self, job_id: int, *, document_id: uuid.UUID, workspace_id: uuid.UUID
    ) -> bool:
        """Ends the stalled ingestion job `job_id` (`failed`) and recovers its document (see
        the module), in one transaction; False when the job was no longer running, or when
        a transaction of its run still holds the document (`documents.hold`: the run is
        alive, whatever its heartbeat says), which the next recovery looks at again."""
        async with self._db.transaction(workspace_id) as session:
            document = await documents.lock_unfinished(
                session, workspace_id=workspace_id, document_id=document_id, idle=0
            )
            if document is None and await documents.is_unfinished(
                session, workspace_id=workspace_id, document_id=document_id
            ):
                return False  # locked by its run's open transaction
            if not await queue.fail_running(session, job_id=job_id):
                return False
            if document is not None:
                await self._recover(session, document, STALLED)
        return True

    async def sweep(self) -> int:
        """Recovers every orphaned document (see the module); returns how many."""
        idle = self._settings.ingest_orphan_grace
        async with self._db.transaction() as session:
            candidates = await documents.unfinished_without_job(session, idle=idle)
        recovered = 0
        for workspace_id, document_id in candidates:
            async with self._db.transaction(workspace_id) as session:
                document = await documents.lock_unfinished(
                    session, workspace_id=workspace_id, document_id=document_id, idle=idle
                )
                if document is None or await queue.has_live_job(session, document_id=document_id):
                    continue  # finished, or taken up again, since the scan
                await self._recover(session, document, ORPHANED)
                recovered += 1
        return recovered

    async def _recover(self, session: AsyncSession, document: Document, reason: str) -> None:
        """Queues the locked `document` again, fails it, or deletes it (see the module)."""
        workspace_id, document_id = document.workspace_id, document.id
        if document.delete_requested_at is not None:
            log.warning(
                "document %s was left marked for deletion (%s): deleting it", document_id, reason
            )
            await documents.delete_unless_held(
                session, workspace_id=workspace_id, document_ids=[document_id]
            )
            return
        limit = self._settings.ingest_max_recoveries
        if document.ingest_recoveries >= limit:
            log.warning(
                "document %s: %s, %d times in a row: FAILED", document_id, reason, limit + 1
            )
            await documents.set_state(
                session,
                workspace_id=workspace_id,
                document_id=document_id,
                status=DocumentStatus.FAILED.value,
                error=f"{reason}, {limit + 1} times in a row; reindex the document to try again",
            )
            return
        log.warning("document %s: %s: queued again", document_id, reason)
        await queue.requeue(
            session,
            workspace_id,
            document_id,
            error=f"{reason}; queued again",
            ingest_recoveries=document.ingest_recoveries + 1,
        )
