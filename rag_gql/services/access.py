"""Who is calling, in which workspace, and what their role lets them do.

Roles, from most to least powerful: OWNER, ADMIN, EDITOR, VIEWER.

| action          | VIEWER | EDITOR | ADMIN | OWNER |
| --------------- | ------ | ------ | ----- | ----- |
| READ            | yes    | yes    | yes   | yes   |  documents, search, answer
| WRITE           |        | yes    | yes   | yes   |  upload, delete, collections
| MANAGE          |        |        | yes   | yes   |  members, invitations, API keys
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from rag_gql.db.models import Role
from rag_gql.errors import Forbidden

RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Action(enum.Enum):
    """What a request wants to do in its workspace."""

    READ = Role.VIEWER
    WRITE = Role.EDITOR
    MANAGE = Role.ADMIN


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a user (`user_id`, `email`) or an API key (`api_key_id`, and
    `key_creator_id`, the user who created it, whose per-user limits it shares), acting in
    `workspace_id` (the tenant) with `role`."""

    workspace_id: uuid.UUID
    role: Role
    user_id: uuid.UUID | None = None
    email: str | None = None
    api_key_id: uuid.UUID | None = None
    key_creator_id: uuid.UUID | None = None

    def can(self, action: Action) -> bool:
        """True when the role allows `action`."""
        return RANK[self.role] >= RANK[action.value]

    def require(self, action: Action) -> None:
        """Raises `Forbidden` unless the role allows `action`."""
        if not self.can(action):
            raise Forbidden(
                f"Your role ({self.role.value}) cannot do this; it needs "
                f"{action.value.value} or higher"
            )

    def outranks_or_equals(self, role: Role) -> bool:
        """True when the caller's role is at least `role` (one cannot grant above oneself)."""
        return RANK[self.role] >= RANK[role]
