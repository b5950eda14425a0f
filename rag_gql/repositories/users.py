"""Users, their one-time email codes, and the failed attempts at those codes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import CodeFailure, EmailCode, User

FAILURE_WINDOW = timedelta(hours=24)
"""How long a failed code attempt counts (the `code_failure` policies prune older rows)."""


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


async def lock_failures(session: AsyncSession, *, account_hash: str) -> None:
    """Serializes, until the transaction ends, the attempts on this account's codes (an
    advisory lock: it also holds for emails with no account, which have no row to lock)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": account_hash}
    )


async def recent_failures(
    session: AsyncSession, *, account_hash: str, purpose: str, now: datetime
) -> tuple[int, datetime | None]:
    """The account's failed attempts for `purpose` within `FAILURE_WINDOW` of `now`, and
    when the oldest of them was (None when there is none). Needs `lookup_hash` scoped to
    `account_hash` (row-level security)."""
    stmt = select(func.count(), func.min(CodeFailure.failed_at)).where(
        CodeFailure.account_hash == account_hash,
        CodeFailure.purpose == purpose,
        CodeFailure.failed_at > now - FAILURE_WINDOW,
    )
    count, oldest = (await session.execute(stmt)).one()
    return int(count), oldest


async def add_failure(
    session: AsyncSession, *, account_hash: str, purpose: str, now: datetime
) -> None:
    """Records a failed attempt, and deletes every account's attempts older than
    `FAILURE_WINDOW` (the policies let any transaction delete those, and only those)."""
    await session.execute(delete(CodeFailure).where(CodeFailure.failed_at <= now - FAILURE_WINDOW))
    session.add(
        CodeFailure(id=uuid.uuid4(), account_hash=account_hash, purpose=purpose, failed_at=now)
    )
    await session.flush()
