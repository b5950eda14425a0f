"""The Strawberry ASGI view: multipart uploads with a CSRF preflight, WebSocket auth."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from rag_gql.errors import DomainError
from rag_gql.graphql.context import Context
from rag_gql.graphql.schema import schema
from rag_gql.resources import Services

# As Apollo Server's CSRF prevention: a browser sends a cross-site multipart POST without a
# preflight, but never with a custom header, so demanding one blocks CSRF uploads.
PREFLIGHT_HEADERS = ("apollo-require-preflight", "x-apollo-operation-name")
CSRF_MESSAGE = (
    "This multipart request has been blocked as a potential Cross-Site Request Forgery "
    "(CSRF). Send a non-empty `Apollo-Require-Preflight` or `X-Apollo-Operation-Name` header."
)


class GraphQLView(GraphQL[Context, None]):
    """`/graphql`: queries and mutations over HTTP, subscriptions over `graphql-transport-ws`.

    Multipart uploads (the GraphQL multipart request spec) are on, but only with a preflight
    header. A WebSocket must authenticate in its `connection_init` payload
    (`{"authorization": "Bearer <token or API key>"}` or `{"apiKey": "rgk_..."}`, with an
    optional `workspaceId`); otherwise it is closed with 4403.
    """

    def __init__(self) -> None:
        super().__init__(
            schema,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            # graphql-ws's own default; Strawberry's is a minute of an idle, unauthenticated socket.
            connection_init_wait_timeout=timedelta(seconds=3),
            multipart_uploads_enabled=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        try:
            try:
                response = await self.run(request)
            except HTTPException as exc:
                response = PlainTextResponse(exc.reason, status_code=exc.status_code)
            await response(scope, receive, send)
        finally:
            # Strawberry parses multipart bodies with `request.form()` and never closes the
            # spooled upload files; closing the request closes them, whatever the outcome.
            await request.close()

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket | None = None
    ) -> Context:
        services: Services = request.app.state.services
        return Context(services=services, request=request, response=response)

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> Any:
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data" and not any(
            request.headers.get(name) for name in PREFLIGHT_HEADERS
        ):
            raise HTTPException(400, CSRF_MESSAGE)
        return await super().parse_http_body(request)

    async def on_ws_connect(self, context: Context) -> dict[str, object] | None:
        try:
            # Refuses the socket at once for bad credentials; each operation checks them again.
            await context.require_principal()
        except DomainError as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from exc
        return None


__all__ = ["GraphQLView"]
