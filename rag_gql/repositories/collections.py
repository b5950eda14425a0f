"""Collections of a workspace (row-level security applies: run inside the workspace)."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Collection, Document
from rag_gql.repositories import documents


async def add(session: AsyncSession, *, workspace_id: uuid.UUID, name: str) -> Collection:
    """Creates a collection (flushes, so a duplicate name fails here)."""
    collection = Collection(id=uuid.uuid4(), workspace_id=workspace_id, name=name)
    session.add(collection)
    await session.flush()
    return collection


async def get(
    session: AsyncSession, *, workspace_id: uuid.UUID, collection_id: uuid.UUID
) -> Collection | None:
    """Returns the workspace's collection, or None (also when it is another's)."""
    stmt = select(Collection).where(
        Collection.workspace_id == workspace_id, Collection.id == collection_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_by_name(
    session: AsyncSession, *, workspace_id: uuid.UUID, name: str
) -> Collection | None:
    """Returns the workspace's collection called `name`, or None."""
    stmt = select(Collection).where(
        Collection.workspace_id == workspace_id, Collection.name == name
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_all(session: AsyncSession, workspace_id: uuid.UUID) -> list[tuple[Collection, int]]:
    """Returns the workspace's collections by name, each with its number of documents."""
    counts = (
        select(Document.collection_id, func.count().label("n"))
        .where(Document.workspace_id == workspace_id, Document.delete_requested_at.is_(None))
        .group_by(Document.collection_id)
        .subquery()
    )
    stmt = (
        select(Collection, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.collection_id == Collection.id)
        .where(Collection.workspace_id == workspace_id)
        .order_by(Collection.name)
    )
    return [(c, int(n)) for c, n in (await session.execute(stmt)).all()]


async def delete_collection(
    session: AsyncSession, *, workspace_id: uuid.UUID, collection_id: uuid.UUID
) -> bool:
    """Deletes the collection; its documents and their chunks go with it, but those an
    ingestion holds, which are marked for deletion and left to the worker
    (`documents.delete_document`). False when not found."""
    marked = await documents.mark_collection_deleted(
        session, workspace_id=workspace_id, collection_id=collection_id
    )
    stmt = (
        delete(Collection)
        .where(Collection.workspace_id == workspace_id, Collection.id == collection_id)
        .returning(Collection.id)
    )
    if (await session.execute(stmt)).scalar_one_or_none() is None:
        return False
    await documents.delete_unless_held(session, workspace_id=workspace_id, document_ids=marked)
    return True
