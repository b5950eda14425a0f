"""Users and their one-time email codes."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import EmailCode, User


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    """Returns the user with this (already lower-cased) email, locked for update."""
    stmt = select(User).where(User.email == email).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(
    session: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False
) -> User | None:
    """Returns the user with this id; `for_update` locks its row until the transaction ends."""
    return await session.get(User, user_id, with_for_update=for_update)


async def add(session: AsyncSession, *, email: str, password_hash: str) -> User:
    """Inserts an unverified user."""
    user = User(id=uuid.uuid4(), email=email, password_hash=password_hash)
    session.add(user)
    await session.flush()
    return user


async def replace_code(
    session: AsyncSession, *, user_id: uuid.UUID, purpose: str, code_hash: str, expires_at: datetime
) -> None:
    """Replaces the user's live code for `purpose` with a new one (only the newest counts)."""
    await session.execute(
        delete(EmailCode).where(EmailCode.user_id == user_id, EmailCode.purpose == purpose)
    )
    session.add(
        EmailCode(
            id=uuid.uuid4(),
            user_id=user_id,
            purpose=purpose,
            code_hash=code_hash,
            expires_at=expires_at,
            attempts=0,
        )
    )
    await session.flush()


async def get_code(session: AsyncSession, *, user_id: uuid.UUID, purpose: str) -> EmailCode | None:
    """Returns the user's live code for `purpose`, locked for update."""
    stmt = (
        select(EmailCode)
        .where(EmailCode.user_id == user_id, EmailCode.purpose == purpose)
        .order_by(EmailCode.created_at.desc())
        .limit(1)
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def delete_codes(session: AsyncSession, *, user_id: uuid.UUID, purpose: str) -> None:
    """Deletes every code of the user for `purpose`."""
    await session.execute(
        delete(EmailCode).where(EmailCode.user_id == user_id, EmailCode.purpose == purpose)
    )
