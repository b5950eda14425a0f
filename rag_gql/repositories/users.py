"""Users, their one-time email codes, and their personal workspace."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import EmailCode, Membership, Role, User, Workspace


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    """Returns the user with this (already lower-cased) email, locked for update."""
    stmt = select(User).where(User.email == email).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """Returns the user with this id."""
    return await session.get(User, user_id)


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


async def create_personal_workspace(session: AsyncSession, user: User) -> Workspace:
    """Creates the user's personal workspace, with the user as its owner."""
    workspace = Workspace(id=uuid.uuid4(), name=f"{user.email}'s workspace", personal=True)
    session.add(workspace)
    await session.flush()
    session.add(Membership(workspace_id=workspace.id, user_id=user.id, role=Role.OWNER.value))
    await session.flush()
    return workspace


async def personal_workspace_id(session: AsyncSession, user_id: uuid.UUID) -> uuid.UUID | None:
    """Returns the id of the user's personal workspace, if the user has one yet."""
    stmt = (
        select(Workspace.id)
        .join(Membership, Membership.workspace_id == Workspace.id)
        .where(Membership.user_id == user_id, Workspace.personal.is_(True))
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()
