"""Workspaces, members and invitations."""

from __future__ import annotations

from typing import Annotated

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import parse_id
from rag_gql.graphql.types.enums import Role
from rag_gql.services.rate_limits import Operation

WorkspaceId = Annotated[strawberry.ID, strawberry.argument(description="The workspace's id.")]
UserId = Annotated[strawberry.ID, strawberry.argument(description="The member's user id.")]
Name = Annotated[str, strawberry.argument(description="1 to 200 characters.")]


@strawberry.type
class WorkspaceQuery:
    @strawberry.field(description="The caller's workspaces, personal first.")
    async def workspaces(self, info: Info) -> list[types.Workspace]:
        principal = await info.context.require_principal()
        views = await info.context.services.workspaces.list_for(principal)
        return [types.Workspace.from_view(v) for v in views]

    @strawberry.field(description="The members of one of the caller's workspaces.")
    async def members(self, info: Info, workspace_id: WorkspaceId) -> list[types.Member]:
        principal = await info.context.require_principal()
        views = await info.context.services.workspaces.members(
            principal, parse_id(workspace_id, "Workspace")
        )
        return [types.Member.from_view(v) for v in views]


@strawberry.type
class WorkspaceMutation:
    @strawberry.mutation(description="Creates a shared workspace owned by the caller.")
    async def create_workspace(self, info: Info, name: Name) -> types.Workspace:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.CREATE_WORKSPACE, principal)
        view = await info.context.services.workspaces.create(principal, name)
        return types.Workspace.from_view(view)

    @strawberry.mutation(description="Emails an invitation to join a workspace (ADMIN+).")
    async def invite_member(
        self,
        info: Info,
        workspace_id: WorkspaceId,
        email: Annotated[str, strawberry.argument(description="Whom to invite.")],
        role: Annotated[
            Role, strawberry.argument(description="The role they get; not above the caller's.")
        ],
    ) -> types.Invitation:
        # Authenticated in the workspace invited to: its allowance is the one counted, and
        # only a member can spend it.
        target = parse_id(workspace_id, "Workspace")
        principal = await info.context.require_principal(target)
        await info.context.services.quotas.hit(Operation.INVITE, principal)
        view = await info.context.services.workspaces.invite(principal, target, email, role)
        return types.Invitation.from_view(view)

    @strawberry.mutation(description="Joins a workspace with the token from an invitation email.")
    async def accept_invitation(
        self,
        info: Info,
        token: Annotated[str, strawberry.argument(description="The token from the email.")],
    ) -> types.Workspace:
        principal = await info.context.require_principal()
        view = await info.context.services.workspaces.accept(principal, token)
        return types.Workspace.from_view(view)

    @strawberry.mutation(description="Removes a member (ADMIN+, or yourself to leave).")
    async def remove_member(self, info: Info, workspace_id: WorkspaceId, user_id: UserId) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.workspaces.remove_member(
            principal, parse_id(workspace_id, "Workspace"), parse_id(user_id, "Member")
        )
        return True

    @strawberry.mutation(description="Changes a member's role (ADMIN+, never above your own).")
    async def update_member_role(
        self,
        info: Info,
        workspace_id: WorkspaceId,
        user_id: UserId,
        role: Annotated[
            Role, strawberry.argument(description="The new role; not above the caller's.")
        ],
    ) -> types.Member:
        principal = await info.context.require_principal()
        view = await info.context.services.workspaces.update_role(
            principal, parse_id(workspace_id, "Workspace"), parse_id(user_id, "Member"), role
        )
        return types.Member.from_view(view)
