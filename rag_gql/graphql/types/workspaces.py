"""Workspaces, their members and invitations."""

from __future__ import annotations

from datetime import datetime

import strawberry

from rag_gql.graphql.types.auth import User
from rag_gql.graphql.types.enums import Role
from rag_gql.services import workspaces


@strawberry.type(description="A workspace (the tenant) and the caller's role in it.")
class Workspace:
    id: strawberry.ID = strawberry.field(
        description="Send it as `X-Workspace-Id` (or `workspaceId` in a WebSocket's "
        "`connection_init`) to act in this workspace."
    )
    name: str = strawberry.field(description="Its name, 1 to 200 characters.")
    personal: bool = strawberry.field(
        description="True for the caller's own workspace, made with the account; it cannot "
        "be shared."
    )
    role: Role = strawberry.field(description="The caller's role in it.")
    created_at: datetime = strawberry.field(description="When it was created.")

    @classmethod
    def from_view(cls, view: workspaces.WorkspaceView) -> Workspace:
        ws = view.workspace
        return cls(
            id=strawberry.ID(str(ws.id)),
            name=ws.name,
            personal=ws.personal,
            role=view.role,
            created_at=ws.created_at,
        )


@strawberry.type(description="A member of a workspace.")
class Member:
    user: User = strawberry.field(description="The member's account.")
    role: Role = strawberry.field(description="The member's role in the workspace.")
    joined_at: datetime = strawberry.field(description="When they joined.")

    @classmethod
    def from_view(cls, view: workspaces.MemberView) -> Member:
        return cls(
            user=User(id=strawberry.ID(str(view.user.id)), email=view.user.email),
            role=Role(view.membership.role),
            joined_at=view.membership.created_at,
        )


@strawberry.type(description="An invitation sent by email; its token is only in the email.")
class Invitation:
    id: strawberry.ID = strawberry.field(description="The invitation's id.")
    email: str = strawberry.field(description="Whom it was sent to.")
    role: Role = strawberry.field(description="The role it grants on acceptance.")
    expires_at: datetime = strawberry.field(
        description="When its token stops working (INVITATION_TTL after sending, 7 days by "
        "default)."
    )

    @classmethod
    def from_view(cls, view: workspaces.InvitationView) -> Invitation:
        inv = view.invitation
        return cls(
            id=strawberry.ID(str(inv.id)),
            email=inv.email,
            role=Role(inv.role),
            expires_at=inv.expires_at,
        )
