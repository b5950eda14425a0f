"""Workspaces and memberships (the tenant and who belongs to it), and invitations.

Row-level security shows a transaction the memberships and invitations of its workspace, the
memberships of its user (`app.user_id`, in any workspace, read only), and the one invitation
it looks up by hash. A new workspace scopes the transaction to itself, to add its owner."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Invitation, Membership, Role, User, Workspace
from rag_gql.db.session import scope


async def create_personal_workspace(session: AsyncSession, user: User) -> Workspace:
    """Creates the user's personal workspace, with the user as its owner; the transaction is
    scoped to it from then on."""
    workspace = Workspace(id=uuid.uuid4(), name=f"{user.email}'s workspace", personal=True)
    session.add(workspace)
    await session.flush()
    await scope(session, workspace_id=workspace.id)
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


@dataclass(frozen=True, slots=True)
class Caller:
    """A user as authentication needs them, with their membership of one workspace (both
    None when they are not a member of it, or have no personal workspace yet)."""

    user_id: uuid.UUID
    email: str
    verified: bool
    token_version: int
    workspace_id: uuid.UUID | None
    role: Role | None


_CALLER = """
SELECT u.id, u.email, u.verified_at IS NOT NULL, u.token_version, m.workspace_id, m.role
FROM "user" u
LEFT JOIN membership m ON m.user_id = u.id AND ({which})
WHERE u.id = $1
LIMIT 1
"""
_CALLER_IN = _CALLER.format(which="m.workspace_id = $2")
_CALLER_PERSONAL = _CALLER.format(
    which="EXISTS (SELECT 1 FROM workspace w WHERE w.id = m.workspace_id AND w.personal)"
)


async def caller(
    conn: asyncpg.Connection, *, user_id: uuid.UUID, workspace_id: uuid.UUID | None
) -> Caller | None:
    """The user and their membership of `workspace_id` (None: their personal workspace), in
    one statement; None when the user does not exist. Every request authenticates, so this
    is SQL text on an asyncpg connection (`Database.driver_transaction()`), not the ORM."""
    if workspace_id is not None:
        row = await conn.fetchrow(_CALLER_IN, user_id, workspace_id)
    else:
        row = await conn.fetchrow(_CALLER_PERSONAL, user_id)
    if row is None:
        return None
    return Caller(
        user_id=row[0],
        email=row[1],
        verified=row[2],
        token_version=row[3],
        workspace_id=row[4],
        role=Role(row[5]) if row[5] is not None else None,
    )


async def member_role(
    session: AsyncSession, *, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Role | None:
    """Returns the user's role in the workspace, or None when not a member."""
    stmt = select(Membership.role).where(
        Membership.workspace_id == workspace_id, Membership.user_id == user_id
    )
    role = (await session.execute(stmt)).scalar_one_or_none()
    return Role(role) if role is not None else None


async def is_member(session: AsyncSession, *, workspace_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Whether the user belongs to the workspace (the transaction must see its memberships)."""
    stmt = select(Membership.user_id).where(
        Membership.workspace_id == workspace_id, Membership.user_id == user_id
    )
    return (await session.execute(stmt)).first() is not None


async def lock_members(session: AsyncSession, workspace_id: uuid.UUID) -> bool:
    """Locks the workspace row (`FOR NO KEY UPDATE`) until the transaction ends, so that
    changes to its members run one at a time and each sees the roles the previous one left;
    returns False when there is no such workspace. Rows referring to the workspace can still
    be written meanwhile (their foreign keys take KEY SHARE locks, which this one allows)."""
    stmt = select(Workspace.id).where(Workspace.id == workspace_id).with_for_update(key_share=True)
    return (await session.execute(stmt)).first() is not None


async def all_ids(session: AsyncSession) -> list[uuid.UUID]:
    """The ids of every workspace (an operator's commands; no row-level security on `workspace`)."""
    return list((await session.execute(select(Workspace.id))).scalars())


async def get(session: AsyncSession, workspace_id: uuid.UUID) -> Workspace | None:
    """Returns the workspace with this id."""
    return await session.get(Workspace, workspace_id)


async def named(session: AsyncSession, name: str) -> list[Workspace]:
    """The workspaces called `name` (names are not unique)."""
    return list((await session.execute(select(Workspace).where(Workspace.name == name))).scalars())


async def add(session: AsyncSession, *, name: str, owner_id: uuid.UUID) -> Workspace:
    """Creates a (shared) workspace with `owner_id` as its OWNER; the transaction is scoped
    to it from then on."""
    workspace = Workspace(id=uuid.uuid4(), name=name, personal=False)
    session.add(workspace)
    await session.flush()
    await scope(session, workspace_id=workspace.id)
    session.add(Membership(workspace_id=workspace.id, user_id=owner_id, role=Role.OWNER.value))
    await session.flush()
    return workspace


async def for_user(session: AsyncSession, user_id: uuid.UUID) -> list[tuple[Workspace, Role]]:
    """Returns the user's workspaces with their role, personal first, then by name."""
    stmt = (
        select(Workspace, Membership.role)
        .join(Membership, Membership.workspace_id == Workspace.id)
        .where(Membership.user_id == user_id)
        .order_by(Workspace.personal.desc(), Workspace.name, Workspace.id)
    )
    return [(ws, Role(role)) for ws, role in (await session.execute(stmt)).all()]


async def members(session: AsyncSession, workspace_id: uuid.UUID) -> list[tuple[Membership, User]]:
    """Returns the workspace's members with their accounts, oldest membership first."""
    stmt = (
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.workspace_id == workspace_id)
        .order_by(Membership.created_at, User.email)
    )
    return [(m, u) for m, u in (await session.execute(stmt)).all()]


async def get_membership(
    session: AsyncSession, *, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Membership | None:
    """Returns the membership row, locked for update."""
    stmt = (
        select(Membership)
        .where(Membership.workspace_id == workspace_id, Membership.user_id == user_id)
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def owner_count(session: AsyncSession, workspace_id: uuid.UUID) -> int:
    """Number of OWNERs of the workspace."""
    stmt = select(func.count()).where(
        Membership.workspace_id == workspace_id, Membership.role == Role.OWNER.value
    )
    return int((await session.execute(stmt)).scalar_one())


async def upsert_membership(
    session: AsyncSession, *, workspace_id: uuid.UUID, user_id: uuid.UUID, role: Role
) -> Membership:
    """Adds the user to the workspace with `role`, or changes their role if already there."""
    membership = await get_membership(session, workspace_id=workspace_id, user_id=user_id)
    if membership is None:
        membership = Membership(workspace_id=workspace_id, user_id=user_id, role=role.value)
        session.add(membership)
    else:
        membership.role = role.value
    await session.flush()
    return membership


async def add_invitation(session: AsyncSession, invitation: Invitation) -> None:
    """Stores an invitation."""
    session.add(invitation)
    await session.flush()


async def invitation_by_hash(session: AsyncSession, token_hash: str) -> Invitation | None:
    """Returns the invitation whose token hashes to `token_hash`, locked for update; the
    transaction sees it from then on (`app.lookup_hash`). Changing it needs its workspace's
    scope."""
    await scope(session, lookup_hash=token_hash)
    stmt = select(Invitation).where(Invitation.token_hash == token_hash).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()
