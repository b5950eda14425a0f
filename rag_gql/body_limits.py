"""Request bodies bounded on the ASGI `receive` stream, before anything reads or authenticates.

`BodyLimitMiddleware` counts the body bytes of every HTTP request, chunked or with a
`Content-Length`, against one limit: `MAX_UPLOAD_BYTES` plus `MULTIPART_OVERHEAD` for
`multipart/form-data`, `GRAPHQL_MAX_BODY_BYTES` for every other body. Over it, the answer is
HTTP 413 with `Connection: close` and a GraphQL-shaped error::

    {"data": null, "errors": [{"message": "The upload is larger than the limit of ...",
                               "extensions": {"code": "BAD_USER_INPUT"}}]}

- A declared `Content-Length` over the limit is answered at once; the app is not called.
- Otherwise the 413 goes out when the bytes received pass the limit. The chunk that passes it
  is not handed on, so the app (a multipart spool, a JSON buffer) never holds more than the
  limit, and its next `receive` raises `BodyTooLarge`. Whatever the app sends afterwards is
  dropped.

After the 413 the connection closes, once what the client still sends has been read and
discarded for at most `LINGER_SECONDS` and at most the limit again: a client that writes its
whole body before it reads would otherwise find its connection reset and lose the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a multipart upload may carry besides the file (operations, map, part headers)."""
LINGER_SECONDS = 2.0
"""Longest time the rest of a refused body is read (and discarded) before the connection closes."""


class BodyTooLarge(Exception):
    """Raised by the bounded `receive` once the body has passed its limit (the 413 is sent)."""


class BodyLimitMiddleware:
    """ASGI middleware: the body limits of the module's docstring. Sizes are in bytes."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = self._limit(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, message)
            # A client waiting for `100 Continue` has sent nothing; reading would invite it to.
            if _header(scope, b"expect") is None:
                await _discard(receive, limit)
            await send({"type": "http.response.body", "body": b""})
            return

        received = 0
        started = False
        refused = False

        async def bounded_receive() -> Message:
            nonlocal received, refused
            if refused:
                raise BodyTooLarge(message)
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    if not started:
                        await _refuse(send, message)
                    refused = True
                    raise BodyTooLarge(message)
            return event

        async def guarded_send(event: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent in the app's place
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except BodyTooLarge:
            if not refused:
                raise  # not our receive's: someone else's limit
        if refused and not started:
            await _discard(receive, limit)
            await send({"type": "http.response.body", "body": b""})
        # A response the app had started before the body passed the limit is left
        # unfinished: the server closes the connection.

    def _limit(self, scope: Scope) -> tuple[int, str]:
        content_type = _header(scope, b"content-type") or ""
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            limit = self.max_upload_bytes
            return limit + MULTIPART_OVERHEAD, (
                f"The upload is larger than the limit of {_size(limit)} (MAX_UPLOAD_BYTES)"
            )
        limit = self.max_body_bytes
        return limit, (
            f"The request body is larger than the limit of {_size(limit)} (GRAPHQL_MAX_BODY_BYTES)"
        )


async def _refuse(send: Send, message: str) -> None:
    """Sends the whole 413, but leaves the response open (`more_body`) to keep the
    connection while `_discard` reads."""
    error = {"message": message, "extensions": {"code": "BAD_USER_INPUT"}}
    body = json.dumps({"data": None, "errors": [error]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _discard(receive: Receive, budget: int) -> None:
    """Reads and drops the request's body until it ends, `budget` bytes have come, or
    `LINGER_SECONDS` have passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while budget >= 0:
                event = await receive()
                if event["type"] != "http.request" or not event.get("more_body"):
                    return
                budget -= len(event.get("body", b""))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _size(n: int) -> str:
    return f"{n} bytes ({n / 2**20:g} MiB)" if n >= 2**20 else f"{n} bytes"


__all__ = ["MULTIPART_OVERHEAD", "BodyLimitMiddleware", "BodyTooLarge"]
