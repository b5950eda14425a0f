"""Per-request (or per-WebSocket-connection) context handed to every resolver."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from rag_gql.errors import NotFound, Unauthenticated
from rag_gql.resources import Services
from rag_gql.services.access import Principal


@dataclass
class Context:
    """What resolvers see: the services, the transport, and the caller once authenticated.

    `connection_params` is the WebSocket `connection_init` payload (Strawberry fills it in).
    """

    services: Services
    request: Request | WebSocket
    response: Response | WebSocket | None = None
    connection_params: dict[str, Any] | None = None
    principal: Principal | None = field(default=None)

    async def require_principal(self) -> Principal:
        """Returns the caller, authenticating the bearer token on first use.

        The workspace is the `X-Workspace-Id` header (HTTP) or `workspaceId` in the
        `connection_init` payload (WebSocket); without one, the user's personal workspace.

        Raises:
            Unauthenticated: no token, or a bad or expired one.
            NotFound: the workspace is not the caller's (or does not exist).
        """
        if self.principal is None:
            token = bearer_token(self.request.headers.get("authorization"))
            if token is None:
                raise Unauthenticated(
                    "Authentication required: send the header `Authorization: Bearer <token>`"
                )
            workspace = parse_workspace_id(self.request.headers.get("x-workspace-id"))
            self.principal = await self.services.auth.authenticate(token, workspace)
        return self.principal


def bearer_token(value: object) -> str | None:
    """Returns the token of a `Bearer <token>` credential (RFC 6750), else None."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def parse_workspace_id(value: object) -> uuid.UUID | None:
    """Parses a workspace id from a header or payload; absent is None.

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
