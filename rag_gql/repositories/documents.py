"""Documents and their stored files (their chunks: `repositories.chunks`). Every query names
the workspace: scoping lives in SQL (and row-level security enforces it as well).

A document whose ingestion holds its row (`hold`) cannot be deleted without waiting for that
transaction: `delete_document` then marks it (`delete_requested_at`), which hides it from
`get`, `list_page` and `set_state` at once, and the worker removes it (`discard`) at its next
batch."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, text, true, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Document, DocumentFilePart, DocumentStatus
from rag_gql.repositories.metadata_sql import MetadataCondition, conditions_clause

EVENTS_CHANNEL = "rag_gql_document_events"
"""`LISTEN` channel of document status and progress changes (payload: `DocumentState` JSON)."""

UNFINISHED = (
    DocumentStatus.QUEUED.value,
    DocumentStatus.PARSING.value,
    DocumentStatus.EMBEDDING.value,
)
"""Statuses of a document whose ingestion has not ended."""
FINISHED = (DocumentStatus.READY.value, DocumentStatus.FAILED.value)
"""Statuses an ingestion ends in."""

_STAGE = "chunk_stage"
LOCK_NOT_AVAILABLE = "55P03"
_IDS_PER_QUERY = 5000


async def get(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> Document | None:
    """Returns the workspace's document with this id, or None (also when it is another's or
    marked for deletion)."""
    stmt = select(Document).where(
        Document.workspace_id == workspace_id,
        Document.id == document_id,
        Document.delete_requested_at.is_(None),
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_many(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_ids: Collection[uuid.UUID]
) -> list[Document]:
    """Returns the workspace's documents with these ids (in no order); others are left out."""
    if not document_ids:
        return []
    stmt = select(Document).where(
        Document.workspace_id == workspace_id, Document.id.in_(list(document_ids))
    )
    return list((await session.execute(stmt)).scalars())


async def current_states(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_ids: Collection[uuid.UUID],
    changed_within: float | None,
    limit: int,
) -> list[Document]:
    """The workspace's documents with these ids, and (with `changed_within`) up to `limit`
    others, the most recently changed, that are not READY or FAILED or were updated in the
    last `changed_within` seconds; least recently updated first. Documents marked for deletion
    are included (`delete_requested_at` set)."""
    found: dict[uuid.UUID, Document] = {}
    ids = list(document_ids)
    for start in range(0, len(ids), _IDS_PER_QUERY):
        stmt = select(Document).where(
            Document.workspace_id == workspace_id,
            Document.id.in_(ids[start : start + _IDS_PER_QUERY]),
        )
        found.update((doc.id, doc) for doc in (await session.execute(stmt)).scalars())
    if changed_within is not None:
        recent = (
            select(Document)
            .where(
                Document.workspace_id == workspace_id,
                Document.status.not_in(("READY", "FAILED"))
                | (Document.updated_at >= func.now() - timedelta(seconds=changed_within)),
            )
            .order_by(Document.updated_at.desc(), Document.id.desc())
            .limit(limit)
        )
        found.update((doc.id, doc) for doc in (await session.execute(recent)).scalars())
    return sorted(found.values(), key=lambda doc: (doc.updated_at, doc.id))


async def ids(session: AsyncSession, *, workspace_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids of every document of the workspace (in no order)."""
    stmt = select(Document.id).where(Document.workspace_id == workspace_id)
    return list((await session.execute(stmt)).scalars())


async def get_by_sha256(
    session: AsyncSession, *, workspace_id: uuid.UUID, sha256: str
) -> Document | None:
    """Returns the workspace's document whose bytes hash to `sha256` (hex)."""
    stmt = select(Document).where(Document.workspace_id == workspace_id, Document.sha256 == sha256)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_page(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
    metadata: Sequence[MetadataCondition] = (),
) -> list[Document]:
    """Returns up to `limit` documents, newest first, strictly after the keyset `before`,
    whose user metadata meets every condition of `metadata`.

    Keyset pagination on (created_at, id), served by `ix_document_workspace_id_created_at`
    (and `ix_document_metadata` for the conditions it serves).
    """
    stmt = select(Document).where(
        Document.workspace_id == workspace_id, Document.delete_requested_at.is_(None)
    )
    if metadata:
        stmt = stmt.where(conditions_clause(metadata, "document.metadata"))
    if before is not None:
        stmt = stmt.where(tuple_(Document.created_at, Document.id) < tuple_(*before))
    stmt = stmt.order_by(Document.created_at.desc(), Document.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def any_newer(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    than: tuple[datetime, uuid.UUID],
    metadata: Sequence[MetadataCondition] = (),
) -> bool:
    """Whether the workspace has a document before the keyset `than` in `list_page`'s order
    (newer) meeting `metadata`; one probe of `ix_document_workspace_id_created_at`."""
    newer = select(Document.id).where(
        Document.workspace_id == workspace_id,
        tuple_(Document.created_at, Document.id) > tuple_(*than),
    )
    if metadata:
        newer = newer.where(conditions_clause(metadata, "document.metadata"))
    return bool((await session.execute(select(newer.exists()))).scalar())


async def set_metadata(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID,
    metadata: dict[str, Any],
) -> Document | None:
    """Replaces the user metadata of the workspace's document (not one marked for deletion);
    returns it, None when there is none."""
    stmt = (
        update(Document)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.delete_requested_at.is_(None),
        )
        .values(meta=metadata)
        .returning(Document)
        .execution_options(synchronize_session=False)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def add(session: AsyncSession, document: Document) -> None:
    """Inserts a document row (flushes, so unique violations surface here)."""
    session.add(document)
    await session.flush()


async def lock_usage(session: AsyncSession, *, workspace_id: uuid.UUID) -> None:
    """Waits for, then holds until the transaction ends, the lock that serialises changes
    to the workspace's stored documents checked against its quotas.

    A transaction-level advisory lock: it conflicts with nothing else (not the row locks of
    the documents' foreign keys to their workspace), and needs no privilege.
    """
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"rag_gql.storage:{workspace_id}"},
    )


async def usage(
    session: AsyncSession, *, workspace_id: uuid.UUID, excluding: uuid.UUID | None = None
) -> tuple[int, int]:
    """Returns the workspace's `(documents, bytes of their original files)`, without the
    document `excluding`."""
    stmt = select(func.count(), func.coalesce(func.sum(Document.size_bytes), 0)).where(
        Document.workspace_id == workspace_id
    )
    if excluding is not None:
        stmt = stmt.where(Document.id != excluding)
    count, size = (await session.execute(stmt)).one()
    return int(count), int(size)


async def delete_document(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> bool:
    """Deletes the workspace's document and (by cascade) its chunks, announcing it on
    `EVENTS_CHANNEL` (its last state, `deleted`); False when not found (or marked already).

    Never waits for an ingestion: a document its worker holds is marked for deletion instead,
    and the worker deletes it at its next batch (see the module).
    """
    stmt = (
        update(Document)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.delete_requested_at.is_(None),
        )
        .values(delete_requested_at=func.now())
        .returning(*_STATE_COLUMNS)
    )
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        return False
    await _announce(session, row, deleted=True)
    await delete_unless_held(session, workspace_id=workspace_id, document_ids=[document_id])
    return True


async def mark_collection_deleted(
    session: AsyncSession, *, workspace_id: uuid.UUID, collection_id: uuid.UUID
) -> list[uuid.UUID]:
    """Marks every document of the collection for deletion and takes it out of the collection
    (so deleting the collection waits for no ingestion), announcing each as `deleted`; returns
    their ids for `delete_unless_held`."""
    stmt = (
        update(Document)
        .where(Document.workspace_id == workspace_id, Document.collection_id == collection_id)
        .values(
            delete_requested_at=func.coalesce(Document.delete_requested_at, func.now()),
            collection_id=None,
        )
        .returning(*_STATE_COLUMNS)
    )
    rows = (await session.execute(stmt)).all()
    for row in rows:
        await _announce(session, row, deleted=True)
    return [row.id for row in rows]


async def delete_unless_held(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_ids: Sequence[uuid.UUID]
) -> None:
    """Deletes those of the documents that no ingestion holds (`hold`), skipping the others
    (`FOR UPDATE SKIP LOCKED`); a lock still in the way of the cascade (`lock_timeout`, one
    second) leaves them to the worker too."""
    if not document_ids:
        return
    free = (
        select(Document.id)
        .where(Document.workspace_id == workspace_id, Document.id.in_(list(document_ids)))
        .with_for_update(skip_locked=True)
    )
    try:
        async with session.begin_nested():
            await session.execute(text("SELECT set_config('lock_timeout', '1000', true)"))
            await session.execute(
                delete(Document).where(
                    Document.workspace_id == workspace_id,
                    Document.id.in_(free.scalar_subquery()),
                )
            )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise


async def hold(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID,
    lease: int | None = None,
) -> bool:
    """Locks the document against deletion until the transaction ends (`FOR KEY SHARE`, what
    writing its chunks takes anyway); False when it is gone or marked for deletion, or (with
    `lease`) a newer ingestion run started (`start_run`), which an ingestion checks at every
    batch. The lock leaves a newer run free to start: it conflicts only with deletion."""
    current = and_(
        Document.delete_requested_at.is_(None),
        true() if lease is None else Document.ingest_lease == lease,
    )
    stmt = (
        select(current)
        .where(Document.workspace_id == workspace_id, Document.id == document_id)
        .with_for_update(read=True, key_share=True)  # FOR KEY SHARE
    )
    return bool((await session.execute(stmt)).scalar_one_or_none())


async def start_run(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> int | None:
    """Starts an ingestion run of the document: PARSING, progress and error cleared, and its
    fencing token (`ingest_lease`) raised by one and returned; None when the document is
    gone or marked for deletion.

    The run passes the token to `set_state` and `hold`, which refuse it once a newer run has
    started: of two runs of one document, only the newest writes (a fencing token, as in
    Kleppmann, "How to do distributed locking", 2016).
    """
    stmt = (
        update(Document)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.delete_requested_at.is_(None),
        )
        .values(
            ingest_lease=Document.ingest_lease + 1,
            status=DocumentStatus.PARSING.value,
            pages_done=0,
            chunks_done=0,
            error=None,
            updated_at=func.now(),
        )
        .returning(Document.ingest_lease, *_STATE_COLUMNS)
    )
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        return None
    await _announce(session, row)
    return int(row.ingest_lease)


async def lock_unfinished(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID, idle: float
) -> Document | None:
    """Locks and returns the document if it is still unfinished (QUEUED, PARSING, EMBEDDING or
    marked for deletion) and unchanged for `idle` seconds; None otherwise, or when an
    ingestion holds it (`hold`: a live run), which it skips rather than waits for."""
    stmt = (
        select(Document)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.status.in_(UNFINISHED) | Document.delete_requested_at.is_not(None),
            Document.updated_at < func.now() - timedelta(seconds=idle),
        )
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def is_unfinished(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> bool:
    """Whether the document exists unfinished (QUEUED, PARSING, EMBEDDING or marked for
    deletion); reads it without waiting for any lock."""
    stmt = select(
        select(Document.id)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.status.in_(UNFINISHED) | Document.delete_requested_at.is_not(None),
        )
        .exists()
    )
    return bool((await session.execute(stmt)).scalar())


async def unfinished_without_job(
    session: AsyncSession, *, idle: float
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """`(workspace_id, document_id)` of the unfinished documents of every workspace that no
    ingestion job waits for or runs, unchanged for `idle` seconds (migration 0009's
    `rag_gql_unfinished_documents`, which scopes itself to each workspace in turn: row-level
    security applies, and the caller's scope is left as it was)."""
    stmt = text(
        "SELECT workspace_id, document_id FROM rag_gql_unfinished_documents("
        "make_interval(secs => :idle))"
    )
    rows = await session.execute(stmt, {"idle": idle})
    return [(row.workspace_id, row.document_id) for row in rows]


async def discard(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> bool:
    """Deletes the document if it is marked for deletion (its `deleted` event went out when
    it was marked); True when it did."""
    stmt = (
        delete(Document)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.delete_requested_at.is_not(None),
        )
        .returning(Document.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def add_file_part(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID, seq: int, data: bytes
) -> None:
    """Stores part `seq` (0-based) of a document's file."""
    session.add(
        DocumentFilePart(document_id=document_id, seq=seq, workspace_id=workspace_id, data=data)
    )
    await session.flush()


async def file_parts(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> AsyncIterator[bytes]:
    """Yields the document's file, part by part (one row in memory at a time)."""
    seqs = (
        await session.execute(
            select(DocumentFilePart.seq)
            .where(
                DocumentFilePart.workspace_id == workspace_id,
                DocumentFilePart.document_id == document_id,
            )
            .order_by(DocumentFilePart.seq)
        )
    ).scalars()
    for seq in list(seqs):
        stmt = select(DocumentFilePart.data).where(
            DocumentFilePart.workspace_id == workspace_id,
            DocumentFilePart.document_id == document_id,
            DocumentFilePart.seq == seq,
        )
        yield (await session.execute(stmt)).scalar_one()


async def file_part_sizes(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> list[int]:
    """The byte length of each stored part of the document's file, in `seq` order (no part's
    bytes are read: `octet_length` of a stored value reads its header)."""
    stmt = (
        select(func.octet_length(DocumentFilePart.data))
        .where(
            DocumentFilePart.workspace_id == workspace_id,
            DocumentFilePart.document_id == document_id,
        )
        .order_by(DocumentFilePart.seq)
    )
    return [int(size) for size in (await session.execute(stmt)).scalars()]


async def file_part_slice(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID,
    seq: int,
    start: int,
    length: int,
) -> bytes | None:
    """Bytes `start` (0-based) to `start + length` of part `seq` of the document's file (fewer
    past the part's end); None when the part is gone (the document was deleted)."""
    stmt = select(func.substring(DocumentFilePart.data, start + 1, length)).where(
        DocumentFilePart.workspace_id == workspace_id,
        DocumentFilePart.document_id == document_id,
        DocumentFilePart.seq == seq,
    )
    data = (await session.execute(stmt)).scalar_one_or_none()
    return None if data is None else bytes(data)


async def set_state(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID,
    lease: int | None = None,
    **values: Any,
) -> bool:
    """Updates a document's status/progress columns and announces it on `EVENTS_CHANNEL`.

    One statement: the notification goes out when the caller's transaction commits, and
    never when it rolls back. Returns False when the document is gone or marked for deletion,
    or (with `lease`, an ingestion run's token from `start_run`) a newer run has started.
    A READY or FAILED document's `ingest_recoveries` count starts again from 0.
    """
    if values.get("status") in FINISHED:
        values.setdefault("ingest_recoveries", 0)
    stmt = (
        update(Document)
        .where(
            Document.workspace_id == workspace_id,
            Document.id == document_id,
            Document.delete_requested_at.is_(None),
            true() if lease is None else Document.ingest_lease == lease,
        )
        .values(**values, updated_at=func.now())
        .returning(*_STATE_COLUMNS)
    )
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        return False
    await _announce(session, row)
    return True


_STATE_COLUMNS = (
    Document.id,
    Document.workspace_id,
    Document.status,
    Document.page_count,
    Document.pages_done,
    Document.chunks_done,
    Document.chunk_count,
    Document.error,
)
"""What a notification on `EVENTS_CHANNEL` carries (`services.document_events`)."""


async def _announce(session: AsyncSession, row: Any, *, deleted: bool = False) -> None:
    """`pg_notify` of a `_STATE_COLUMNS` row: sent when the transaction commits."""
    payload = {
        "document_id": str(row.id),
        "workspace_id": str(row.workspace_id),
        "status": row.status,
        "pages_total": row.page_count,
        "pages_done": row.pages_done,
        "chunks_done": row.chunks_done,
        "chunk_count": row.chunk_count,
        "error": (row.error or "")[:1000] or None,
        "deleted": deleted,
    }
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": EVENTS_CHANNEL, "payload": json.dumps(payload)},
    )
