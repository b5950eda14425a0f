"""Documents and their chunks. Every query names the workspace: scoping lives in SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Chunk, Document


async def get(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> Document | None:
    """Returns the workspace's document with this id, or None (also when it is another's)."""
    stmt = select(Document).where(Document.workspace_id == workspace_id, Document.id == document_id)
    return (await session.execute(stmt)).scalar_one_or_none()


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
) -> list[Document]:
    """Returns up to `limit` documents, newest first, strictly after the keyset `before`.

    Keyset pagination on (created_at, id), served by `ix_document_workspace_id_created_at`.
    """
    stmt = select(Document).where(Document.workspace_id == workspace_id)
    if before is not None:
        stmt = stmt.where(tuple_(Document.created_at, Document.id) < tuple_(*before))
    stmt = stmt.order_by(Document.created_at.desc(), Document.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def add(session: AsyncSession, document: Document) -> None:
    """Inserts a document row (flushes, so unique violations surface here)."""
    session.add(document)
    await session.flush()


async def add_chunks(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-inserts chunk rows (dicts keyed by `Chunk` column names) in one statement batch."""
    if rows:
        await session.execute(insert(Chunk), list(rows))


async def delete_document(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> bool:
    """Deletes the workspace's document and (by cascade) its chunks; False when not found."""
    stmt = (
        delete(Document)
        .where(Document.workspace_id == workspace_id, Document.id == document_id)
        .returning(Document.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """A chunk found by similarity: cosine `distance` in [0, 2] and its document."""

    chunk_id: int
    distance: float
    text: str
    page: int
    char_start: int
    char_end: int
    document: Document


async def nearest_chunks(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    embedding: Sequence[float],
    k: int,
    ef_search: int,
    collection_ids: Sequence[uuid.UUID] | None = None,
) -> list[ChunkHit]:
    """Returns the workspace's `k` chunks nearest to `embedding` by cosine distance.

    Uses the HNSW index (`vector_cosine_ops`); `hnsw.ef_search` is raised to at least `k` for
    this transaction, and pgvector 0.8's iterative scan keeps filtered results complete.
    With `collection_ids`, only chunks of documents in those collections.
    """
    await session.execute(
        text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(ef_search, k))}
    )
    await session.execute(text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
    # The k nearest ids first (an index scan on HNSW with LIMIT), then their rows and
    # documents: joining inside the ordered query can make the planner sort instead.
    distance = Chunk.embedding.cosine_distance(embedding)
    scope = [Chunk.workspace_id == workspace_id]
    if collection_ids is not None:
        scope.append(Chunk.collection_id.in_(list(collection_ids)))
    nearest = (
        select(Chunk.id, distance.label("distance"))
        .where(*scope)
        .order_by(distance)
        .limit(k)
        .subquery()
    )
    stmt = (
        select(
            Chunk.id,
            nearest.c.distance,
            Chunk.text,
            Chunk.page,
            Chunk.char_start,
            Chunk.char_end,
            Document,
        )
        .join(nearest, nearest.c.id == Chunk.id)
        .join(Document, Document.id == Chunk.document_id)
        .where(Document.workspace_id == workspace_id)
    )
    rows = list((await session.execute(stmt)).all())
    # The join does not keep the subquery's order, and relaxed_order may return neighbours
    # slightly out of order; k rows are cheap to sort.
    rows.sort(key=lambda row: float(row[1]))
    return [
        ChunkHit(
            chunk_id=row[0],
            distance=float(row[1]),
            text=row[2],
            page=row[3],
            char_start=row[4],
            char_end=row[5],
            document=row[6],
        )
        for row in rows
    ]
