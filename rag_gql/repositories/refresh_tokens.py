"""Refresh tokens, stored as the SHA-256 of the opaque token, in families (one per login).

Row-level security shows a transaction the tokens of its user (`app.user_id`) and the one token
it looks up by hash; writing needs the user's scope."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import RefreshToken
from rag_gql.db.session import scope


async def add(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    token_hash: str,
    expires_at: datetime,
) -> RefreshToken:
    """Inserts a live refresh token of `family_id`."""
    token = RefreshToken(
        id=uuid.uuid4(),
        user_id=user_id,
        family_id=family_id,
        token_hash=token_hash,
        expires_at=expires_at,
    )
    session.add(token)
    await session.flush()
    return token


async def get_by_hash(
    session: AsyncSession, token_hash: str, *, for_update: bool = False
) -> RefreshToken | None:
    """Returns the token with this hash; `for_update` locks its row until the transaction ends.

    The transaction sees that token from then on (`app.lookup_hash`); changing it or its
    family needs `scope(session, user_id=token.user_id)`."""
    await scope(session, lookup_hash=token_hash)
    stmt = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, *, now: datetime) -> None:
    """Revokes every token of the family not revoked yet."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_all(session: AsyncSession, user_id: uuid.UUID, *, now: datetime) -> None:
    """Revokes every token of the user not revoked yet (all sessions)."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
