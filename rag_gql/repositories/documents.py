"""Documents and their chunks. Every query names the workspace: scoping lives in SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, tuple_
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
