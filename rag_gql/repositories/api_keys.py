"""API keys. Row-level security shows a transaction its workspace's keys, and the one key
whose hash it looks up (`get_by_hash`, before the workspace is known). Every other query names
the workspace as well."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import ApiKey
from rag_gql.db.session import scope


async def add(session: AsyncSession, key: ApiKey) -> None:
    """Inserts a key (flushes, so `created_at` and unique violations come back here)."""
    session.add(key)
    await session.flush()
    await session.refresh(key, ["created_at"])


async def get_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    """Returns the key whose secret hashes to `key_hash` (SHA-256 hex), in any workspace;
    the transaction sees that key from then on (`app.lookup_hash`), and no other."""
    await scope(session, lookup_hash=key_hash)
    stmt = select(ApiKey).where(ApiKey.key_hash == key_hash)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(
    session: AsyncSession, *, workspace_id: uuid.UUID, key_id: uuid.UUID
) -> ApiKey | None:
    """Returns the workspace's key with this id, or None (also when it is another's)."""
    stmt = select(ApiKey).where(ApiKey.workspace_id == workspace_id, ApiKey.id == key_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_for_workspace(session: AsyncSession, *, workspace_id: uuid.UUID) -> list[ApiKey]:
    """Returns the workspace's keys, revoked ones included, newest first."""
    stmt = (
        select(ApiKey)
        .where(ApiKey.workspace_id == workspace_id)
        .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    )
    return list((await session.execute(stmt)).scalars())


async def revoke_created_by(
    session: AsyncSession, *, workspace_id: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> int:
    """Revokes (at `now`) the workspace's live keys that `user_id` created; returns how many."""
    stmt = (
        update(ApiKey)
        .where(
            ApiKey.workspace_id == workspace_id,
            ApiKey.created_by == user_id,
            ApiKey.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]
