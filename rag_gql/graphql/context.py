"""Per-request (or per-WebSocket-connection) context handed to every resolver."""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from rag_gql.errors import Forbidden, NotFound, Unauthenticated
from rag_gql.resources import Services
from rag_gql.services.access import Principal
from rag_gql.services.api_keys import API_KEY_PREFIX, INVALID
from rag_gql.services.records import Document
from rag_gql.services.shared_caps import SharedSlots

HTTP_CREDENTIALS = "send the header `Authorization: Bearer <token>` or `X-API-Key: <key>`"
WS_CREDENTIALS = (
    'send `{"authorization": "Bearer <token>"}` or `{"apiKey": "<key>"}` in connection_init'
)


@dataclass
class Context:
    """What resolvers see: the services, the transport, and the caller once authenticated.

    `connection_params` is the WebSocket `connection_init` payload (Strawberry fills it in);
    `caller` whom the socket authenticated as then (`rate_limits.caller_key`), which its limits
    count against; `held` the connection slots the socket holds until it closes
    (`rag_gql.graphql.websocket`).
    """

    services: Services
    request: Request | WebSocket
    response: Response | WebSocket | None = None
    connection_params: dict[str, Any] | None = None
    principal: Principal | None = field(default=None)
    caller: str | None = None
    held: list[tuple[SharedSlots, Hashable]] = field(default_factory=list)
    _elsewhere: dict[uuid.UUID, Principal] = field(default_factory=dict, init=False, repr=False)
    _documents: DataLoader[uuid.UUID, Document | None] | None = field(
        default=None, init=False, repr=False
    )

    async def require_principal(self, workspace_id: uuid.UUID | None = None) -> Principal:
        """Returns the caller acting in `workspace_id`, authenticating on first use.

        Without `workspace_id`, the request's workspace: the `X-Workspace-Id` header (HTTP)
        or `workspaceId` in the `connection_init` payload (WebSocket), else the user's
        personal workspace (an API key's is its own). The credential is an access token or
        an API key (`rgk_…`): `Authorization: Bearer` or `X-API-Key` over HTTP,
        `authorization` or `apiKey` in the `connection_init` payload.

        Raises:
            Unauthenticated: no credential, or a bad, expired or revoked one.
            NotFound: the workspace is not the caller's (or does not exist).
        """
        if isinstance(self.request, WebSocket):
            # A socket outlives removals, revocations and password changes: each operation
            # on it authenticates again rather than act with access the caller has lost.
            return await self._authenticate(
                self._requested_workspace() if workspace_id is None else workspace_id
            )
        if workspace_id is None or (
            self.principal is not None and self.principal.workspace_id == workspace_id
        ):
            if self.principal is None:
                self.principal = await self._authenticate(self._requested_workspace())
            return self.principal
        if workspace_id not in self._elsewhere:
            self._elsewhere[workspace_id] = await self._authenticate(workspace_id)
        return self._elsewhere[workspace_id]

    async def reauthorize(self, principal: Principal) -> Principal:
        """Authenticates the caller's credential again, in `principal`'s workspace: what a
        long-lived stream does from time to time so that it never outlives its access.

        Raises:
            Unauthenticated: the credential expired or was revoked (an access token past its
                `exp` or of a changed password, a revoked or expired API key), or the account
                is gone.
            Forbidden: the caller is no longer a member of the workspace.
        """
        try:
            return await self._authenticate(principal.workspace_id)
        except NotFound:
            raise Forbidden("You are no longer a member of this workspace") from None

    async def load_document(self, document_id: uuid.UUID) -> Document | None:
        """The request workspace's document with this id, or None (deleted, or not the
        workspace's). Loads that resolvers start together share one query; nothing is cached,
        so a WebSocket's context, which outlives its operations, never serves a stale row."""
        if self._documents is None:
            self._documents = DataLoader(self._load_documents, cache=False)
        return await self._documents.load(document_id)

    async def _load_documents(self, ids: list[uuid.UUID]) -> list[Document | None]:
        principal = await self.require_principal()
        found = await self.services.documents.get_many(principal, set(ids))
        return [found.get(document_id) for document_id in ids]

    async def _authenticate(self, workspace_id: uuid.UUID | None) -> Principal:
        credential = self._credential()
        if credential.startswith(API_KEY_PREFIX):
            return await self.services.api_keys.authenticate(credential, workspace_id)
        return await self.services.auth.authenticate(credential, workspace_id)

    def _credential(self) -> str:
        if isinstance(self.request, WebSocket):
            params = self.connection_params or {}
            bearer = params.get("authorization") or params.get("Authorization")
            api_key, how = params.get("apiKey"), WS_CREDENTIALS
        else:
            bearer = self.request.headers.get("authorization")
            api_key, how = self.request.headers.get("x-api-key"), HTTP_CREDENTIALS
        token = bearer_token(bearer)
        if token is not None:
            return token
        if isinstance(api_key, str) and api_key.strip():
            api_key = api_key.strip()
            # Only an API key goes in this slot, never an access token.
            if not api_key.startswith(API_KEY_PREFIX):
                raise Unauthenticated(INVALID)
            return api_key
        raise Unauthenticated(f"Authentication required: {how}")

    def _requested_workspace(self) -> uuid.UUID | None:
        if isinstance(self.request, WebSocket):
            return parse_workspace_id((self.connection_params or {}).get("workspaceId"))
        return parse_workspace_id(self.request.headers.get("x-workspace-id"))


def bearer_token(value: object) -> str | None:
    """Returns the token of a `Bearer <token>` credential (RFC 6750), else None."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def parse_workspace_id(value: object) -> uuid.UUID | None:
    """Parses a workspace id from a header, payload or argument; absent is None.

    Raises:
        NotFound: a value that is not an id (the same answer as an unknown workspace).
    """
    if value is None or value == "":
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise NotFound("Workspace not found") from exc


Info = strawberry.Info[Context, None]
