"""Per-request (or per-WebSocket-connection) context handed to every resolver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from rag_gql.errors import Unauthenticated
from rag_gql.resources import Services
from rag_gql.services.auth import Principal


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

        Raises:
            Unauthenticated: no token, or a bad or expired one.
        """
        if self.principal is None:
            token = bearer_token(self.request.headers.get("authorization"))
            if token is None:
                raise Unauthenticated(
                    "Authentication required: send the header `Authorization: Bearer <token>`"
                )
            self.principal = await self.services.auth.authenticate(token)
        return self.principal


def bearer_token(value: object) -> str | None:
    """Returns the token of a `Bearer <token>` credential (RFC 6750), else None."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


Info = strawberry.Info[Context, None]
