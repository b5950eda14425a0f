"""Workspaces (the tenant), their members and roles, and invitations by email.

Rules: only a user (not an API key) creates workspaces and accepts invitations; inviting,
removing members and changing roles need ADMIN or OWNER in that workspace; nobody grants,
removes or changes a role above their own; a workspace always keeps an OWNER (removals and
role changes of one workspace take turns on a lock of its row, so that two OWNERs demoting
each other at once cannot both pass the last-OWNER check); a personal workspace has exactly
its one owner. A removed member's API keys are revoked with the removal. Every refusal about
a workspace the caller is not in is NOT_FOUND, the same as for a workspace that does not exist.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Invitation, Membership, Role, User, Workspace
from rag_gql.db.session import scope
from rag_gql.errors import Forbidden, InvalidInput, NotFound
from rag_gql.providers.mail import Mailer
from rag_gql.repositories import api_keys, users, workspaces
from rag_gql.services.access import RANK, Action, Principal
from rag_gql.services.auth import normalize_email
from rag_gql.services.tokens import token_hash

MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class WorkspaceView:
    """A workspace and the caller's role in it."""

    workspace: Workspace
    role: Role


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member: the account and its role."""

    user: User
    membership: Membership


@dataclass(frozen=True, slots=True)
class InvitationView:
    """An invitation just sent; `token` is only in the email, never in the API."""

    invitation: Invitation


class WorkspaceService:
    """Creates workspaces and manages who belongs to them."""

    def __init__(self, *, settings: Settings, db: Database, mailer: Mailer) -> None:
        self._settings = settings
        self._db = db
        self._mailer = mailer

    async def create(self, principal: Principal, name: str) -> WorkspaceView:
        """Creates a shared workspace owned by the calling user.

        Raises:
            Forbidden: the caller is an API key.
            InvalidInput: empty or over-long name.
        """
        user_id = _user_only(principal)
        name = _clean_name(name)
        async with self._db.transaction() as session:
            workspace = await workspaces.add(session, name=name, owner_id=user_id)
        return WorkspaceView(workspace, Role.OWNER)

    async def list_for(self, principal: Principal) -> list[WorkspaceView]:
        """The caller's workspaces with their role (an API key sees its own workspace)."""
        async with self._db.transaction(user_id=principal.user_id) as session:
            if principal.user_id is None:
                workspace = await workspaces.get(session, principal.workspace_id)
                return [WorkspaceView(workspace, principal.role)] if workspace else []
            rows = await workspaces.for_user(session, principal.user_id)
        return [WorkspaceView(ws, role) for ws, role in rows]

    async def members(self, principal: Principal, workspace_id: uuid.UUID) -> list[MemberView]:
        """The members of a workspace the caller belongs to (any role may look).

        Raises:
            NotFound: not the caller's workspace.
        """
        async with self._db.transaction(workspace_id) as session:
            await _role_in(session, principal, workspace_id)
            rows = await workspaces.members(session, workspace_id)
        return [MemberView(user, membership) for membership, user in rows]

    async def invite(
        self, principal: Principal, workspace_id: uuid.UUID, email: str, role: Role
    ) -> InvitationView:
        """Emails a one-time invitation token for `email` to join with `role`.

        Raises:
            NotFound: not the caller's workspace.
            Forbidden: the caller is below ADMIN, or `role` is above the caller's.
            InvalidInput: a malformed email, or a personal workspace.
        """
        email = normalize_email(email)
        token = secrets.token_urlsafe(32)
        async with self._db.transaction(workspace_id) as session:
            acting = await _role_in(session, principal, workspace_id)
            _require_manage(acting, role)
            workspace = await workspaces.get(session, workspace_id)
            assert workspace is not None  # _role_in found a membership in it
            if workspace.personal:
                raise InvalidInput("A personal workspace cannot be shared; create a workspace")
            invitation = Invitation(
                id=uuid.uuid4(),
                workspace_id=workspace_id,
                email=email,
                role=role.value,
                token_hash=token_hash(token),
                invited_by=principal.user_id,
                expires_at=datetime.now(UTC) + timedelta(seconds=self._settings.invitation_ttl),
            )
            await workspaces.add_invitation(session, invitation)
            name = workspace.name
        days = max(1, self._settings.invitation_ttl // 86400)
        await self._mailer.send(
            to=email,
            subject=f"You are invited to the rag-gql workspace {name!r}",
            body=(
                f"You have been invited to join {name!r} as {role.value}.\n\n"
                f'Accept with the mutation acceptInvitation(token: "{token}") while logged '
                f"in as {email}.\n\nThe invitation expires in {days} days."
            ),
        )
        return InvitationView(invitation)

    async def accept(self, principal: Principal, token: str) -> WorkspaceView:
        """Joins the workspace of the invitation `token`, which must be for the caller's email.

        Raises:
            Forbidden: the caller is an API key.
            NotFound: unknown, used, expired, or someone else's invitation (one message).
        """
        user_id = _user_only(principal)
        missing = NotFound("Invitation not found or expired")
        async with self._db.transaction(user_id=user_id) as session:
            invitation = await workspaces.invitation_by_hash(session, token_hash(token.strip()))
            user = await users.get(session, user_id)
            if (
                invitation is None
                or user is None
                or invitation.accepted_at is not None
                or invitation.expires_at <= datetime.now(UTC)
                or invitation.email != user.email
            ):
                raise missing
            await scope(session, workspace_id=invitation.workspace_id)  # the one it joins
            invitation.accepted_at = datetime.now(UTC)
            current = await workspaces.member_role(
                session, workspace_id=invitation.workspace_id, user_id=user_id
            )
            role = Role(invitation.role)
            if current is not None and RANK[current] >= RANK[role]:
                role = current  # an invitation never demotes
            await workspaces.upsert_membership(
                session, workspace_id=invitation.workspace_id, user_id=user_id, role=role
            )
            workspace = await workspaces.get(session, invitation.workspace_id)
            assert workspace is not None  # the invitation's FK cascades on delete
        return WorkspaceView(workspace, role)

    async def remove_member(
        self, principal: Principal, workspace_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        """Removes a member (ADMIN/OWNER, or a member leaving on their own).

        The member's API keys of this workspace are revoked in the same transaction.

        Raises:
            NotFound: not the caller's workspace, or not a member of it.
            Forbidden: below ADMIN, the member outranks the caller, or the last OWNER.
        """
        async with self._db.transaction(workspace_id) as session:
            await workspaces.lock_members(session, workspace_id)
            acting = await _role_in(session, principal, workspace_id)
            target = await workspaces.get_membership(
                session, workspace_id=workspace_id, user_id=user_id
            )
            if target is None:
                raise NotFound("Member not found")
            if user_id != principal.user_id:
                _require_manage(acting, Role(target.role))
            await _keep_an_owner(session, workspace_id, target)
            await session.delete(target)
            await api_keys.revoke_created_by(
                session, workspace_id=workspace_id, user_id=user_id, now=datetime.now(UTC)
            )

    async def update_role(
        self, principal: Principal, workspace_id: uuid.UUID, user_id: uuid.UUID, role: Role
    ) -> MemberView:
        """Changes a member's role.

        Raises:
            NotFound: not the caller's workspace, or not a member of it.
            Forbidden: below ADMIN; the member's current or new role outranks the caller's;
                it would leave no OWNER.
        """
        async with self._db.transaction(workspace_id) as session:
            await workspaces.lock_members(session, workspace_id)
            acting = await _role_in(session, principal, workspace_id)
            target = await workspaces.get_membership(
                session, workspace_id=workspace_id, user_id=user_id
            )
            if target is None:
                raise NotFound("Member not found")
            _require_manage(acting, Role(target.role))
            _require_manage(acting, role)
            if role is not Role.OWNER:
                await _keep_an_owner(session, workspace_id, target)
            target.role = role.value
            user = await users.get(session, user_id)
            assert user is not None  # membership has an FK to the user
        return MemberView(user, target)


async def _role_in(session: AsyncSession, principal: Principal, workspace_id: uuid.UUID) -> Role:
    """The caller's role in `workspace_id`; NotFound when they are not in it."""
    if principal.user_id is None:
        if workspace_id != principal.workspace_id:
            raise NotFound("Workspace not found")
        return principal.role
    role = await workspaces.member_role(
        session, workspace_id=workspace_id, user_id=principal.user_id
    )
    if role is None:
        raise NotFound("Workspace not found")
    return role


def _require_manage(acting: Role, role: Role) -> None:
    if RANK[acting] < RANK[Action.MANAGE.value]:
        raise Forbidden(f"Your role ({acting.value}) cannot manage members; it needs ADMIN")
    if RANK[role] > RANK[acting]:
        raise Forbidden(f"Your role ({acting.value}) cannot grant or change {role.value}")


async def _keep_an_owner(
    session: AsyncSession, workspace_id: uuid.UUID, target: Membership
) -> None:
    if target.role == Role.OWNER.value and await workspaces.owner_count(session, workspace_id) <= 1:
        raise Forbidden("A workspace must keep an OWNER; make someone else OWNER first")


def _user_only(principal: Principal) -> uuid.UUID:
    if principal.user_id is None:
        raise Forbidden("This needs a user's access token, not an API key")
    return principal.user_id


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise InvalidInput("The name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"The name is longer than {MAX_NAME_LENGTH} characters")
    return name
