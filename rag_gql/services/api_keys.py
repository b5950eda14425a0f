"""API keys: a workspace's credentials for services, with a role like a member's.

A key works while the member who created it stays in its workspace: removing them revokes
their keys (`revoke_created_by`), and authentication checks the membership too.

A secret reads `rgk_` + 8 hex characters (the public prefix, shown in listings) + `_` +
`secrets.token_urlsafe(32)` (256 random bits). It is shown once, at creation; the database
keeps only its SHA-256 (a fast hash suffices: the secret is random, not a password) and
the displayable prefix `rgk_XXXXXXXX`.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rag_gql.db import Database
from rag_gql.db.models import ApiKey, Role
from rag_gql.db.session import scope
from rag_gql.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from rag_gql.repositories import api_keys, workspaces
from rag_gql.services.access import Action, Principal
from rag_gql.services.tokens import token_hash

API_KEY_PREFIX = "rgk_"
"""Every secret starts with this: it tells an API key from an access token."""
MAX_NAME_LENGTH = 200
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""`last_used_at` is written at most this often per key, not on every request."""
INVALID = "The API key is invalid, revoked or expired"


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A new key and its secret: the only time the secret exists outside the caller."""

    api_key: ApiKey
    secret: str


def new_secret() -> tuple[str, str]:
    """Returns a fresh secret and its displayable prefix (`rgk_` + 8 hex characters)."""
    prefix = API_KEY_PREFIX + secrets.token_hex(4)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


class ApiKeyService:
    """Creating, listing and revoking a workspace's keys; authenticating with one."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def create(
        self, principal: Principal, *, name: str, role: Role, expires_at: datetime | None
    ) -> CreatedApiKey:
        """Creates a key acting with `role` in the principal's workspace.

        Raises:
            Forbidden: the caller is an API key, cannot MANAGE (below ADMIN), or `role` is
                above the caller's own.
            InvalidInput: an empty or over-long name, or `expires_at` without an offset or
                not in the future.
        """
        if principal.api_key_id is not None:
            raise Forbidden("An API key cannot create API keys; use a user's access token")
        principal.require(Action.MANAGE)
        if not principal.outranks_or_equals(role):
            raise Forbidden(
                f"Your role ({principal.role.value}) cannot create a key with the higher "
                f"role {role.value}"
            )
        name = name.strip()
        if not name:
            raise InvalidInput("An API key needs a name")
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"The name must have at most {MAX_NAME_LENGTH} characters")
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidInput("expiresAt needs a UTC offset, like 2030-01-01T00:00:00Z")
            if expires_at <= datetime.now(UTC):
                raise InvalidInput("expiresAt must be in the future")
        secret, prefix = new_secret()
        key = ApiKey(
            id=uuid.uuid4(),
            workspace_id=principal.workspace_id,
            name=name,
            role=role.value,
            prefix=prefix,
            key_hash=token_hash(secret),
            created_by=principal.user_id,
            expires_at=expires_at,
        )
        async with self._db.transaction(principal.workspace_id) as session:
            await api_keys.add(session, key)
        return CreatedApiKey(api_key=key, secret=secret)

    async def list_keys(self, principal: Principal) -> list[ApiKey]:
        """Returns the workspace's keys, revoked and expired ones included, newest first.

        Raises:
            Forbidden: the caller cannot MANAGE (below ADMIN).
        """
        principal.require(Action.MANAGE)
        async with self._db.transaction(principal.workspace_id) as session:
            return await api_keys.list_for_workspace(session, workspace_id=principal.workspace_id)

    async def revoke(self, principal: Principal, key_id: uuid.UUID) -> ApiKey:
        """Revokes one of the workspace's keys at once; revoking it again changes nothing.

        Raises:
            Forbidden: the caller cannot MANAGE (below ADMIN).
            NotFound: no such key in the workspace (another workspace's key included).
        """
        principal.require(Action.MANAGE)
        async with self._db.transaction(principal.workspace_id) as session:
            key = await api_keys.get(session, workspace_id=principal.workspace_id, key_id=key_id)
            if key is None:
                raise NotFound("API key not found")
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
        return key

    async def authenticate(self, secret: str, workspace_id: uuid.UUID | None = None) -> Principal:
        """Returns the principal of a key: its workspace, its role, `api_key_id` set.

        Records `last_used_at`, at most once a minute per key.

        Raises:
            Unauthenticated: an unknown, revoked or expired key, or one whose creator is no
                longer a member of its workspace (one message for all).
            NotFound: `workspace_id` is given and is not the key's workspace.
        """
        if not secret.startswith(API_KEY_PREFIX):
            raise Unauthenticated(INVALID)
        now = datetime.now(UTC)
        async with self._db.transaction() as session:
            key = await api_keys.get_by_hash(session, token_hash(secret))
            if key is None or key.revoked_at is not None:
                raise Unauthenticated(INVALID)
            if key.expires_at is not None and key.expires_at <= now:
                raise Unauthenticated(INVALID)
            if workspace_id is not None and workspace_id != key.workspace_id:
                raise NotFound("Workspace not found")
            await scope(session, workspace_id=key.workspace_id)  # the key acts in its workspace
            # A key lives as long as its creator's membership: removing the member (or their
            # leaving, or their account's deletion) ends it, whatever became of the row.
            if key.created_by is None or not await workspaces.is_member(
                session, workspace_id=key.workspace_id, user_id=key.created_by
            ):
                raise Unauthenticated(INVALID)
            if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
                key.last_used_at = now
        return Principal(
            workspace_id=key.workspace_id,
            role=Role(key.role),
            api_key_id=key.id,
            key_creator_id=key.created_by,
        )
