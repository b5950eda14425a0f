"""Request bodies are bounded while they stream, before authentication (`rag_gql.body_limits`):
raw HTTP/1.1 over sockets, with a declared length or chunked, against the real server; and the
middleware alone, to show what an app behind it can have received."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.formparsers import MultiPartParser
from starlette.types import Message, Scope

from rag_gql.body_limits import MULTIPART_OVERHEAD, BodyLimitMiddleware
from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.serving import serve
from tests.support.smtp import Inbox
from tests.support.uploads import assert_error

MiB = 2**20
CHUNK = 64 * 1024
REPLY_TIMEOUT = 20.0
BOUNDARY = "rag-gql-test-boundary"
UPLOAD = "mutation($file: Upload!) { uploadDocument(file: $file) { filename status } }"


@dataclass
class Reply:
    status: int
    body: Json
    sent: int
    """Body bytes the client had written when the status line came."""
    closed: bool
    """The server closed the connection after the reply."""


async def post(
    url: str,
    headers: dict[str, str],
    chunks: Iterable[bytes],
    *,
    content_length: int | None = None,
    finish: bool = True,
) -> Reply:
    """POSTs to `url`'s /graphql over a raw socket, chunked unless `content_length` is given,
    while reading the reply; the sending stops when the reply comes (or the server closes).
    `finish=False` leaves a chunked body without its last chunk."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    framing = (
        {"Content-Length": str(content_length)}
        if content_length is not None
        else {"Transfer-Encoding": "chunked"}
    )
    head = f"POST /graphql HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in {**headers, **framing}.items()
    )
    writer.write(head.encode() + b"\r\n")
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                if content_length is None:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            if content_length is None and finish:
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    sender = asyncio.create_task(send_body())
    try:
        async with asyncio.timeout(REPLY_TIMEOUT):
            status_line = await reader.readline()
            sent_at_reply = sent
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length))
            try:
                closed = await reader.read(1) == b""
            except ConnectionError:
                closed = True
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return Reply(int(status_line.split()[1]), body, sent_at_reply, closed)


def json_body(size: int) -> Iterator[bytes]:
    """A GraphQL request of `size` bytes (a long comment), in chunks; no credentials."""
    head = b'{"query": "{ __typename } #'
    tail = b'"}'
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        yield b"x" * min(CHUNK, left)
        left -= CHUNK
    yield tail


def multipart_body(file_bytes: int, filename: str = "notes.txt") -> Iterator[bytes]:
    """A GraphQL multipart upload of a text file of `file_bytes` bytes, in chunks."""
    operations = json.dumps({"query": UPLOAD, "variables": {"file": None}})
    yield (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="operations"\r\n\r\n'
        f"{operations}\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="map"\r\n\r\n'
        '{"0": ["variables.file"]}\r\n'
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="0"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    line = b"the kite flies high over the hill\n" * (CHUNK // 34)
    left = file_bytes
    while left > 0:
        yield line[:left]
        left -= len(line)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


MULTIPART = {
    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    "Apollo-Require-Preflight": "true",
}
JSON = {"Content-Type": "application/json"}
CLOSE = {"Connection": "close"}
"""For the requests that succeed: the reply is read to the end of the connection."""


def spooled_bytes(directory: Path) -> int:
    """Bytes in the files under `directory` this process holds open (unlinked ones too)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        path = f"/proc/self/fd/{fd}"
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(path).startswith(str(directory)):
                total += os.stat(path).st_size
    return total


def assert_refused(reply: Reply, *fragments: str) -> None:
    assert reply.status == 413, reply
    assert reply.body["data"] is None
    assert_error(reply.body, "BAD_USER_INPUT", *fragments)
    assert reply.closed, "the connection must not wait for the rest of the body"


async def test_a_declared_oversized_body_is_refused_before_it_is_read(
    server_url: str,
) -> None:
    # 200 MiB declared, no credentials: the reply comes with 1 KiB of it sent.
    reply = await post(server_url, JSON, [b"{" * 1024], content_length=200 * MiB)
    assert_refused(reply, "limit of 1048576 bytes (1 MiB)", "GRAPHQL_MAX_BODY_BYTES")

    reply = await post(server_url, MULTIPART, [b"-" * 1024], content_length=200 * MiB)
    assert_refused(reply, "limit of 104857600 bytes (100 MiB)", "MAX_UPLOAD_BYTES")


async def test_a_chunked_json_body_is_refused_as_it_passes_the_limit(server_url: str) -> None:
    # The body never ends: the server can only answer by counting what it has read so far.
    reply = await post(server_url, JSON, json_body(MiB + 4 * CHUNK), finish=False)
    assert_refused(reply, "GRAPHQL_MAX_BODY_BYTES")

    # 40 MiB, sent until the reply comes: it comes long before the end.
    reply = await post(server_url, JSON, json_body(40 * MiB))
    assert_refused(reply, "GRAPHQL_MAX_BODY_BYTES")
    assert reply.sent < 20 * MiB

    # Under the limit, chunked and declared alike, the request is served.
    for length in (None, 1000):
        chunks = list(json_body(1000))
        reply = await post(server_url, CLOSE | JSON, chunks, content_length=length)
        assert reply.status == 200 and reply.body == {"data": {"__typename": "Query"}}, reply


async def test_a_chunked_upload_never_spools_more_than_the_limit(
    settings: Settings, inbox: Inbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    # Every uploaded byte goes to a file in `spool` (Starlette keeps the first MiB in memory).
    monkeypatch.setattr(MultiPartParser, "spool_max_size", 1)
    limited = settings.model_copy(update={"max_upload_bytes": MiB})
    most = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, spooled_bytes(spool))
            await asyncio.sleep(0.002)

    async with serve(limited) as url:
        sampler = asyncio.create_task(sample())
        try:
            reply = await post(url, MULTIPART, multipart_body(40 * MiB))
        finally:
            stop.set()
            await sampler
        assert_refused(reply, "limit of 1048576 bytes (1 MiB)", "MAX_UPLOAD_BYTES")
        assert reply.sent < 20 * MiB
        assert 0 < most <= MiB + MULTIPART_OVERHEAD, most
        gc.collect()
        assert spooled_bytes(spool) == 0

        # An upload under the limit, chunked, is spooled and stored as usual.
        token = await sign_up_at(url, inbox)
        headers = {**MULTIPART, "Authorization": f"Bearer {token}"}
        reply = await post(url, CLOSE | headers, multipart_body(MiB - 4096))
        assert reply.status == 200, reply
        assert reply.body["data"]["uploadDocument"] == {"filename": "notes.txt", "status": "QUEUED"}


async def sign_up_at(url: str, inbox: Inbox) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        return await sign_up(GraphQLClient(http, url), inbox, "ada@example.com")


async def test_the_app_behind_the_middleware_never_receives_more_than_the_limit() -> None:
    seen = 0
    called = False

    async def app(scope: Scope, receive: object, send: object) -> None:
        nonlocal seen, called
        called = True
        assert callable(receive)
        while True:
            message = await receive()
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    limited = BodyLimitMiddleware(app, max_body_bytes=100_000, max_upload_bytes=10 * MiB)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    def scope(**headers: str) -> Scope:
        encoded = [(k.encode(), v.encode()) for k, v in headers.items()]
        return {"type": "http", "method": "POST", "path": "/graphql", "headers": encoded}

    async def endless() -> Message:
        return {"type": "http.request", "body": b"x" * 30_000, "more_body": True}

    await limited(scope(**{"content-type": "application/json"}), endless, send)
    assert called and 70_000 <= seen <= 100_000
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert sent[-1] == {"type": "http.response.body", "body": b""}  # the response ends

    called, seen, sent[:] = False, 0, []
    await limited(scope(**{"content-length": str(100_001)}), endless, send)
    assert not called and sent[0]["status"] == 413

    # Multipart bodies get MAX_UPLOAD_BYTES and the allowance for the other fields.
    called, seen, sent[:] = False, 0, []
    multipart = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    await limited(scope(**multipart), endless, send)
    assert 10 * MiB + MULTIPART_OVERHEAD - 30_000 <= seen <= 10 * MiB + MULTIPART_OVERHEAD
    assert sent[0]["status"] == 413
