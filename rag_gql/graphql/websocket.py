"""`graphql-transport-ws` with limits: how many operations a socket and a user may have live,
and how long the server waits for a client that does not read.

What a client meets:

- no `connection_init` within `WS_CONNECTION_INIT_TIMEOUT` seconds: closed with 4408;
  missing or bad credentials in it: closed with 4403 (Strawberry's code for a rejected
  `connection_init`); `subscribe` before it was acknowledged: closed with 4401.
- a `connection_init` while `MAX_WEBSOCKETS_PER_IP` sockets from the client's IP, or
  `MAX_WEBSOCKETS_PER_USER` of the user's (their API keys included), are acknowledged and
  open: closed with 4429 and the reason `Too many WebSocket connections of this user (at
  most 10, MAX_WEBSOCKETS_PER_USER)`. Counted over every replica when Redis is configured
  (`rag_gql.services.shared_caps`), in this process otherwise.
- a `subscribe` past `WS_MAX_OPERATIONS_PER_CONNECTION` live operations on the socket, or
  past `WS_MAX_OPERATIONS_PER_USER` on all the user's sockets: an `error` message for that
  operation, `[{"message": ..., "extensions": {"code": "RATE_LIMITED", "retryAfter": 1}}]`;
  the socket and its other operations carry on.
- keep-alive: uvicorn pings every `WS_PING_INTERVAL` seconds (WebSocket ping frames, which
  browsers answer by themselves) and closes with 1011 a socket whose pong does not come within
  `WS_PING_TIMEOUT`; a client's own graphql-transport-ws `ping` gets a `pong`.
- a client that stops reading: each message waits for room in the socket's send buffer
  (asyncio's 64 KiB, then the kernel's) and so never piles up in the server; one that waits
  longer than `WS_SEND_TIMEOUT` seconds gets the socket dropped: its operations are cancelled
  (an answer is stored as interrupted) and the connection is released. No close frame can
  reach a client that does not read; the kernel discards the socket once the peer goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

from starlette.types import Message, Receive, Send
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    ErrorMessage,
    SubscribeMessage,
)

from rag_gql.errors import DomainError, RateLimited
from rag_gql.graphql.context import Context
from rag_gql.graphql.extensions import as_graphql_error
from rag_gql.services.shared_caps import SharedSlots

log = logging.getLogger(__name__)

DISCONNECTED: Message = {"type": "websocket.disconnect", "code": 1006}
TOO_MANY_CONNECTIONS = 4429
"""Close code of a socket past `MAX_WEBSOCKETS_PER_USER` or `MAX_WEBSOCKETS_PER_IP`."""


class SocketRefused(Exception):
    """Raised in `on_ws_connect`: the socket is closed with `code` and `reason` (at most 123
    bytes, RFC 6455 5.5) instead of being acknowledged."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def hold_connection(context: Context, slots: SharedSlots, key: Hashable) -> None:
    """Holds one of `slots` for `key` until the socket of `context` closes.

    Raises:
        SocketRefused: `key` already holds `slots.limit` (code 4429).
    """
    try:
        await slots.acquire(key)
    except RateLimited:
        reason = f"Too many {slots.what} (at most {slots.limit}, {slots.setting})"
        raise SocketRefused(TOO_MANY_CONNECTIONS, reason) from None
    context.held.append((slots, key))


def release_connections(context: Context) -> None:
    """Gives back every slot the socket of `context` holds (once: the list is emptied)."""
    while context.held:
        slots, key = context.held.pop()
        slots.release(key)


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """Strawberry's handler, with the connection and operation limits above and quiet client
    departures."""

    async def handle(self) -> None:
        try:
            await super().handle()
        finally:
            release_connections(self.context)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except SocketRefused as refused:
            # Before the close: a client that reconnects at once finds the places free.
            release_connections(self.context)
            await self.websocket.close(code=refused.code, reason=refused.reason)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if not self.connection_acknowledged or message["id"] in self.operations:
            await super().handle_subscribe(message)  # closes the socket (4401, 4409)
            return
        services = self.context.services
        limit = services.settings.ws_max_operations_per_connection
        if len(self.operations) >= limit:
            await self._refuse(
                message["id"],
                RateLimited(
                    f"Too many live operations on this connection (at most {limit}, "
                    "WS_MAX_OPERATIONS_PER_CONNECTION); try again in 1 second, or complete one",
                    retry_after=1,
                ),
            )
            return
        caller = self.context.caller
        if caller is not None:
            try:
                await services.ws_operations.acquire(caller)
            except RateLimited as exc:
                await self._refuse(message["id"], exc)
                return
        await super().handle_subscribe(message)
        if caller is None:
            return
        operation = self.operations.get(message["id"])
        if operation is None or operation.task is None:
            services.ws_operations.release(caller)
        else:
            operation.task.add_done_callback(lambda _: services.ws_operations.release(caller))

    async def _refuse(self, operation_id: str, error: DomainError) -> None:
        formatted = as_graphql_error(error).formatted
        message: ErrorMessage = {"id": operation_id, "type": "error", "payload": [formatted]}
        await self.send_message(message)

    async def handle_task_exception(self, error: Exception) -> None:
        if isinstance(error, WebSocketDisconnected):
            # The client left (or was dropped for not reading) while an operation was sending.
            log.info("WebSocket client gone during an operation")
            return
        await super().handle_task_exception(error)


def bounded(receive: Receive, send: Send, *, send_timeout: float) -> tuple[Receive, Send]:
    """Wraps a WebSocket's ASGI `receive` and `send`: a send that waits longer than
    `send_timeout` seconds for the client to make room drops the connection, i.e. the send
    fails as if the client had gone (OSError, which Starlette reports as a disconnect) and
    `receive` answers `websocket.disconnect` from then on, which ends the connection's
    handler."""
    dropped = asyncio.Event()

    async def bounded_send(message: Message) -> None:
        if dropped.is_set():
            raise OSError("the WebSocket client was dropped")
        try:
            async with asyncio.timeout(send_timeout):
                await send(message)
        except TimeoutError:
            dropped.set()
            log.warning(
                "dropping a WebSocket client that read nothing for %.0f s (WS_SEND_TIMEOUT)",
                send_timeout,
            )
            raise OSError("the WebSocket client stopped reading") from None

    async def receive_until_dropped() -> Message:
        if dropped.is_set():
            return DISCONNECTED
        received = asyncio.ensure_future(receive())
        drop = asyncio.ensure_future(dropped.wait())
        try:
            await asyncio.wait({received, drop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (received, drop):
                if not future.done():
                    future.cancel()
        if received.done() and not received.cancelled():
            return received.result()
        return DISCONNECTED

    return receive_until_dropped, bounded_send


__all__ = [
    "SocketRefused",
    "TransportWSHandler",
    "bounded",
    "hold_connection",
    "release_connections",
]
