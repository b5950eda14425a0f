"""The Strawberry ASGI view: multipart uploads with a CSRF preflight, WebSocket auth,
subscriptions over HTTP, the abuse limits, and a GraphiQL page that loads nothing from
outside the server."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from importlib import resources
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.http import GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.graphql import OperationType

from rag_gql.config import Settings
from rag_gql.errors import DomainError
from rag_gql.graphql import http_subscriptions
from rag_gql.graphql.context import Context
from rag_gql.graphql.http_subscriptions import SUBSCRIPTION_NEEDS_STREAM, RequestRefused
from rag_gql.graphql.limits import Limits
from rag_gql.graphql.schema import build_schema
from rag_gql.graphql.websocket import (
    TransportWSHandler,
    bounded,
    hold_connection,
    release_connections,
)
from rag_gql.resources import Services
from rag_gql.services.rate_limits import caller_key

# As Apollo Server's CSRF prevention: a browser sends a cross-site multipart POST without a
# preflight, but never with a custom header, so demanding one blocks CSRF uploads.
PREFLIGHT_HEADERS = ("apollo-require-preflight", "x-apollo-operation-name")
CSRF_MESSAGE = (
    "This multipart request has been blocked as a potential Cross-Site Request Forgery "
    "(CSRF). Send a non-empty `Apollo-Require-Preflight` or `X-Apollo-Operation-Name` header."
)
STATIC_PATH = "/graphql/static"
"""Where the app serves `rag_gql/static/graphiql` (the page refers to it relatively)."""
GRAPHIQL_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'{sockets}; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
"""The GraphiQL page's Content-Security-Policy: its scripts and styles from this server only
(GraphiQL's CSS inlines its fonts and icons as data: URLs), requests to this server only."""
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class GraphQLView(GraphQL[Context, None]):
    """`/graphql`: queries and mutations over HTTP, subscriptions over `graphql-transport-ws`
    and over HTTP as `multipart/mixed` (`rag_gql.graphql.http_subscriptions`, which says
    what a client meets; a subscription over plain JSON is refused with 400).

    Multipart uploads (the GraphQL multipart request spec) are on, but only with a preflight
    header; bodies come bounded by `rag_gql.body_limits`. A WebSocket must authenticate in its
    `connection_init` payload (`{"authorization": "Bearer <token or API key>"}` or
    `{"apiKey": "rgk_..."}`, with an optional `workspaceId`); otherwise it is closed with 4403;
    past the sockets allowed per user or per IP, with 4429. Its other limits are in
    `rag_gql.graphql.websocket`. Every operation passes the limits of
    `settings` (`rag_gql.graphql.limits`); batched requests (a JSON array) are
    refused with 400, as Strawberry does without a batching config. `extensions` are added to
    the schema's own (see `build_schema`).
    """

    graphql_transport_ws_handler_class = TransportWSHandler

    def __init__(
        self, settings: Settings, *, extensions: Sequence[Callable[[], SchemaExtension]] = ()
    ) -> None:
        super().__init__(
            build_schema(Limits.from_settings(settings), extensions=extensions),
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL),
            # graphql-ws's own default is 3 s; Strawberry's a minute of an idle,
            # unauthenticated socket.
            connection_init_wait_timeout=timedelta(seconds=settings.ws_connection_init_timeout),
            multipart_uploads_enabled=True,
            # TransportWSHandler counts operations itself, and answers with a code.
            max_subscriptions_per_connection=None,
        )
        self._ws_send_timeout = settings.ws_send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            receive, send = bounded(receive, send, send_timeout=self._ws_send_timeout)
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        # Made here, not in `run`: a subscription over HTTP holds places in it
        # (`http_subscriptions.admit`) until its stream has been sent.
        context = await self.get_context(request)
        try:
            try:
                response = await self.run(request, context=context)
            except HTTPException as exc:
                response = PlainTextResponse(exc.reason, status_code=exc.status_code)
            except RequestRefused as refused:
                response = refused.response()
            if isinstance(response, StreamingResponse):
                await http_subscriptions.stream(
                    response, context, scope, receive, send, send_timeout=self._ws_send_timeout
                )
            else:
                await response(scope, receive, send)
        finally:
            release_connections(context)
            # Strawberry parses multipart bodies with `request.form()` and never closes the
            # spooled upload files; closing the request closes them, whatever the outcome.
            await request.close()

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        """Strawberry's, with a subscription over HTTP admitted first
        (`http_subscriptions.admit`): a refusal is the response, as JSON."""
        if (
            isinstance(request_data, GraphQLRequestData)
            and request_data.protocol == MULTIPART_SUBSCRIPTION_PROTOCOL
        ):
            refused = await http_subscriptions.admit(context)
            if refused is not None:
                return ExecutionResult(data=None, errors=[refused])
        return await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """Strawberry's, but a subscription (which a JSON response cannot stream) is refused
        with 400 and a GraphQL-shaped error rather than run as if it were a query.

        Raises:
            RequestRefused: a subscription (400, `BAD_REQUEST`).
            HTTPException: no query, an unknown operation name, or a mutation over GET (400).
        """
        method = request_adapter.method
        allowed = OperationType.from_http(method) - {OperationType.SUBSCRIPTION}
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except InvalidOperationTypeError as exc:
            if exc.operation_type is OperationType.SUBSCRIPTION:
                raise RequestRefused(400, SUBSCRIPTION_NEEDS_STREAM, "BAD_REQUEST") from exc
            raise HTTPException(400, exc.as_http_error_reason(method)) from exc
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from exc
        except MissingQueryError as exc:
            raise HTTPException(400, "No GraphQL query found in the request") from exc

    async def render_graphql_ide(self, request: Request) -> Response:
        """GraphiQL, its assets served from `STATIC_PATH`, under a strict CSP."""
        page = resources.files("rag_gql.graphql").joinpath("graphiql.html").read_text("utf-8")
        return HTMLResponse(page, headers={"Content-Security-Policy": graphiql_csp(request)})

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
        services = context.services
        client = context.request.client
        if client is not None:
            # Before authenticating: a flood from one address costs no database work.
            await hold_connection(context, services.websockets_per_ip, client.host)
        try:
            # Refuses the socket at once for bad credentials; each operation checks them again.
            principal = await context.require_principal()
        except DomainError as exc:
            release_connections(context)
            raise ConnectionRejectionError({"message": str(exc)}) from exc
        context.caller = caller_key(principal)
        await hold_connection(context, services.websockets_per_user, context.caller)
        return None


def graphiql_csp(request: Request) -> str:
    """`GRAPHIQL_CSP`, with the page's own WebSocket origin for subscriptions (CSP level 3
    browsers count it under 'self'; older ones need it named)."""
    host = request.headers.get("host", "")
    if not _HOST.fullmatch(host):
        return GRAPHIQL_CSP.format(sockets="")
    scheme = "wss" if request.url.scheme == "https" else "ws"
    return GRAPHIQL_CSP.format(sockets=f" {scheme}://{host}")


__all__ = ["GraphQLView"]
