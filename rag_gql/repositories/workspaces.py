"""Workspaces and memberships (the tenant and who belongs to it)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Membership, Role, User, Workspace


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


async def member_role(
    session: AsyncSession, *, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Role | None:
    """Returns the user's role in the workspace, or None when not a member."""
    stmt = select(Membership.role).where(
        Membership.workspace_id == workspace_id, Membership.user_id == user_id
    )
    role = (await session.execute(stmt)).scalar_one_or_none()
    return Role(role) if role is not None else None
