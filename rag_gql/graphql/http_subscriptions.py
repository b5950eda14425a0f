"""Subscriptions over HTTP: the multipart subscription protocol, with the WebSocket limits.

Apollo's "Multipart HTTP protocol for GraphQL Subscriptions" (the framing of Incremental
Delivery over HTTP, RFC 1341 `multipart/mixed`), which Strawberry speaks and Apollo Client,
Apollo Kotlin/iOS and `curl -N` read. A `POST /graphql` (or `GET`) whose
`Accept` is `multipart/mixed;subscriptionSpec="1.0", application/json` runs a subscription
and answers `Content-Type: multipart/mixed;boundary=graphql;subscriptionSpec=1.0,...`: one
part per event, `{"payload": {"data": {...}}}`; a heartbeat part `{}` at once and every
5 seconds; `--graphql--` when the subscription completes.

What a client meets:

- credentials as for any HTTP request: `Authorization: Bearer <token or API key>` or
  `X-API-Key`, and `X-Workspace-Id`. Missing or bad ones, and the limits below, are answered
  before the stream opens with an ordinary GraphQL JSON response, as an HTTP query gets them:
  status 200, `{"data": null, "errors": [{"message": ..., "extensions": {"code": ...}}]}`.
- a stream counts as one WebSocket would with one operation, against the same budgets: a
  connection of its IP (`MAX_WEBSOCKETS_PER_IP`, checked before authenticating) and of its
  user (`MAX_WEBSOCKETS_PER_USER`), and a live operation of the user
  (`WS_MAX_OPERATIONS_PER_USER`). Past one: `RATE_LIMITED` with `retryAfter: 1`. Counted in
  this process only; a stream gives its places back when it ends.
- everything else that bounds an operation applies unchanged (`rag_gql.graphql.limits`, the
  rate limits and `MAX_ANSWER_STREAMS_PER_USER`, the body limits of `rag_gql.body_limits`);
  an error from them is the stream's one part, `{"payload": {"data": null, "errors": [...]}}`,
  and the stream completes.
- no timeout ends a long stream: the database's request timeouts bound its transactions, and
  none is held while it streams.
- a client that goes away (or stops reading for longer than `WS_SEND_TIMEOUT`, and is then
  dropped) ends the operation as a closed WebSocket does: the resolver is cancelled (an
  answer is stored as interrupted), its database connection and listener freed, its places
  released.
- a subscription sent without that `Accept` (plain JSON over HTTP cannot carry a stream):
  status 400, `{"data": null, "errors": [{"message": SUBSCRIPTION_NEEDS_STREAM,
  "extensions": {"code": "BAD_REQUEST"}}]}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Hashable

from graphql import GraphQLError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from rag_gql.errors import DomainError, RateLimited
from rag_gql.graphql.context import Context
from rag_gql.graphql.extensions import as_graphql_error
from rag_gql.graphql.websocket import release_connections
from rag_gql.services.rate_limits import caller_key
from rag_gql.services.shared_caps import SharedSlots

log = logging.getLogger(__name__)

STREAM_ACCEPT = 'multipart/mixed;subscriptionSpec="1.0", application/json'
"""The `Accept` header that asks for a subscription over HTTP."""
SUBSCRIPTION_NEEDS_STREAM = (
    "A subscription over HTTP needs the header "
    f"`Accept: {STREAM_ACCEPT}` (the multipart subscription protocol), or a WebSocket "
    "(graphql-transport-ws)"
)


class RequestRefused(Exception):
    """Raised by the view to answer `status` with a GraphQL-shaped error instead of running
    the request."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def response(self) -> JSONResponse:
        """`{"data": null, "errors": [{"message", "extensions": {"code"}}]}` with `status`."""
        error = {"message": self.message, "extensions": {"code": self.code}}
        return JSONResponse({"data": None, "errors": [error]}, status_code=self.status)


async def admit(context: Context) -> GraphQLError | None:
    """Holds the places of one HTTP subscription stream in `context.held` and authenticates
    its caller; returns None, or the error to answer instead (nothing is then held).

    The places are the client IP's connection, the user's connection and the user's live
    operation (see the module docstring); `release_connections(context)` gives them back.
    """
    services = context.services
    try:
        client = context.request.client
        if client is not None:
            # Before authenticating: a flood from one address costs no database work.
            await _hold(context, services.websockets_per_ip, client.host, "from this address")
        principal = await context.require_principal()
        context.caller = caller_key(principal)
        await _hold(context, services.websockets_per_user, context.caller, "of this user")
        await _hold(context, services.ws_operations, context.caller, None)
    except DomainError as exc:
        release_connections(context)
        return as_graphql_error(exc)
    return None


async def _hold(context: Context, slots: SharedSlots, key: Hashable, whose: str | None) -> None:
    """Holds one of `slots` for `key` in `context.held`.

    Raises:
        RateLimited: `key` holds `slots.limit` already; the message names the connections
            `whose` they are (WebSockets and HTTP streams share the budget), or is the
            slots' own when `whose` is None.
    """
    try:
        await slots.acquire(key)
    except RateLimited as exc:
        if whose is None:
            raise
        raise RateLimited(
            f"Too many streaming connections {whose} (WebSockets and HTTP subscriptions "
            f"together: at most {slots.limit}, {slots.setting}); try again in 1 second, or "
            "when one has ended",
            retry_after=1,
        ) from exc
    context.held.append((slots, key))


async def stream(
    response: StreamingResponse,
    context: Context,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    send_timeout: float,
) -> None:
    """Sends the streamed `response` until it ends or the client goes; either way its body
    (the subscription's resolver) is closed before this returns, and the places in
    `context.held` released. A send that waits longer than `send_timeout` seconds for the
    client to read drops the client (the server then closes the connection)."""
    try:
        await response(scope, receive, _bounded(send, send_timeout))
    except (OSError, ClientDisconnect):
        log.info("HTTP subscription client gone")
    finally:
        body = response.body_iterator
        if isinstance(body, AsyncGenerator):
            # Starlette leaves the body unclosed when a send fails; the stream's tasks (the
            # resolver, the heartbeat) are cancelled and awaited here rather than left to GC.
            await body.aclose()
        release_connections(context)


def _bounded(send: Send, timeout: float) -> Send:
    async def send_within(message: Message) -> None:
        try:
            async with asyncio.timeout(timeout):
                await send(message)
        except TimeoutError:
            log.warning(
                "dropping an HTTP subscription client that read nothing for %.0f s "
                "(WS_SEND_TIMEOUT)",
                timeout,
            )
            raise OSError("the HTTP client stopped reading") from None

    return send_within


__all__ = [
    "STREAM_ACCEPT",
    "SUBSCRIPTION_NEEDS_STREAM",
    "RequestRefused",
    "admit",
    "stream",
]
