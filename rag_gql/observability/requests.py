"""Request ids: one per HTTP request and per WebSocket operation, in every log line.

`RequestIdMiddleware` binds `request_id` (structlog's context variables, so it is local to
the request's task) for each HTTP request and WebSocket connection, returns it in the
`X-Request-Id` response header and writes one access line per request (method, path without
its query string, status, milliseconds). A caller's own `X-Request-Id` is kept when it is a
plain token of at most 64 characters (as from a load balancer); otherwise a new one is made.
Each operation on a WebSocket gets its own id (`bind_operation_id`), with the connection's
kept as `connection_id`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

access_log = logging.getLogger("rag_gql.access")


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The request id bound in this task, if any."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


@contextmanager
def bind_operation_id() -> Iterator[str]:
    """Binds a new `request_id` for one WebSocket operation (in its own task), keeping the
    connection's as `connection_id`; unbinds on exit. Yields the new id."""
    connection = current_request_id()
    request_id = new_request_id()
    with structlog.contextvars.bound_contextvars(request_id=request_id, connection_id=connection):
        yield request_id


class RequestIdMiddleware:
    """ASGI middleware: request ids, the `X-Request-Id` header, and the access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or new_request_id()
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.accept"):
                message["headers"] = [*message.get("headers", ()), header]
                status = message.get("status", 101)
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                access_log.info(
                    "%s %s %s",
                    scope.get("method", "WEBSOCKET"),
                    scope["path"],
                    status or "-",
                    extra={
                        "method": scope.get("method", "WEBSOCKET"),
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if _ACCEPTABLE_ID.fullmatch(text) else None
    return None
