"""WebSocket limits and the rate limits of the expensive operations, through the real API.

Covered elsewhere: bad or missing credentials close 4403 and the 3 s `connection_init` default
closes 4408 (test_auth), re-authentication per operation (test_attacks).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.types import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from rag_gql.config import Settings
from rag_gql.graphql.websocket import bounded
from tests.support.accounts import sign_up
from tests.support.answers import answer_frames, events, kinds, next_frame, start_answer
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve, serve_server
from tests.support.smtp import Inbox
from tests.support.sql import connect as sql

EVENTS = "subscription { documentEvents { status } }"
SEARCH = "query($q: String!) { search(query: $q, k: 2) { page } }"
QUESTION = "What does sourdough bread need?"
LONG_REPLY = " ".join(["word"] * 400)


@asynccontextmanager
async def limited(
    gql: GraphQLClient, settings: Settings, **update: object
) -> AsyncIterator[GraphQLClient]:
    """A client of the app served with `update` applied to the test's settings."""
    async with serve(settings.model_copy(update=update)) as url:
        yield GraphQLClient(gql.http, url)


@asynccontextmanager
async def socket_of(gql: GraphQLClient, token: str) -> AsyncIterator[ClientConnection]:
    """An acknowledged graphql-transport-ws socket for `token`."""
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        yield ws


async def send_subscribe(ws: ClientConnection, op_id: str, query: str = EVENTS) -> None:
    payload = {"query": query, "variables": {}}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))


async def frame_for(ws: ClientConnection, op_id: str, timeout: float = 5.0) -> Json:
    """The next message for `op_id`."""
    async with asyncio.timeout(timeout):
        while True:
            message: Json = json.loads(await ws.recv())
            if message.get("id") == op_id:
                return message


async def quiet(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Asserts nothing arrives for `seconds` (a live subscription with no event yet)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            raise AssertionError(await ws.recv())


def assert_refused(message: Json, *fragments: str) -> None:
    """An `error` message for the operation: RATE_LIMITED, retry after 1 s."""
    assert message["type"] == "error", message
    (error,) = message["payload"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}, error
    for fragment in fragments:
        assert fragment in error["message"], error


async def notes(gql: GraphQLClient, inbox: Inbox, email: str = "ada@example.com") -> str:
    token = await sign_up(gql, inbox, email)
    pdf = make_pdf(["Sourdough bread needs flour, water, salt and a lively starter."])
    response = await gql.upload("notes.pdf", pdf, token=token)
    assert response.json()["data"]["uploadDocument"]["status"] == "READY", response.text
    return token


# --- connection ----------------------------------------------------------------------------


async def test_connection_init_timeout_is_a_setting(gql: GraphQLClient, settings: Settings) -> None:
    async with (
        limited(gql, settings, ws_connection_init_timeout=1.0) as client,
        client.websocket() as ws,
    ):
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
        assert 0.8 < time.monotonic() - opened < 2.5


async def test_keep_alive(gql: GraphQLClient, inbox: Inbox, settings: Settings) -> None:
    async with limited(gql, settings, ws_ping_interval=0.2, ws_ping_timeout=0.5) as client:
        token = await sign_up(client, inbox, "ada@example.com")
        async with socket_of(client, token) as ws:
            # The protocol's own ping is answered.
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}
            # The server pings every 0.2 s; a client that answers (as browsers and this
            # library do by themselves) stays connected however long it is idle.
            await asyncio.sleep(1.5)
            await send_subscribe(ws, "me", "{ me { email } }")
            assert (await frame_for(ws, "me"))["payload"]["data"]["me"]["email"]


# --- operations per connection and per user ------------------------------------------------


async def test_live_operations_per_connection_and_per_user(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    update = {"ws_max_operations_per_connection": 2, "ws_max_operations_per_user": 3}
    async with limited(gql, settings, **update) as client:
        token = await sign_up(client, inbox, "ada@example.com")
        other = await sign_up(client, inbox, "bob@example.com")
        async with socket_of(client, token) as first, socket_of(client, token) as second:
            await send_subscribe(first, "a")
            await send_subscribe(first, "b")
            await quiet(first)
            await send_subscribe(first, "c")
            assert_refused(await frame_for(first, "c"), "this connection", "at most 2")

            await send_subscribe(second, "d")
            await quiet(second)
            await send_subscribe(second, "e")  # the user's fourth
            assert_refused(await frame_for(second, "e"), "live operations", "at most 3")

            # Another user is not affected.
            async with socket_of(client, other) as theirs:
                await send_subscribe(theirs, "x")
                await quiet(theirs)

            # Completing one frees its place; the refused ones took none.
            await first.send(json.dumps({"id": "a", "type": "complete"}))
            await asyncio.sleep(0.2)
            await send_subscribe(second, "e")
            await quiet(second)
            await send_subscribe(first, "f")
            assert_refused(await frame_for(first, "f"), "at most 3")

        # Closed sockets free theirs.
        await asyncio.sleep(0.3)
        async with socket_of(client, token) as ws:
            for op_id in ("g", "h"):
                await send_subscribe(ws, op_id)
            await quiet(ws)


async def test_concurrent_answers_per_user(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    # The answer stopped below gives its place back at once when it does not run on.
    update = {"max_answer_streams_per_user": 2, "answer_continue_on_disconnect": False}
    async with limited(gql, settings, **update) as client:
        token = await notes(client, inbox)
        ollama.chat_reply = LONG_REPLY
        ollama.token_delay = 0.05
        async with socket_of(client, token) as ws:
            started = {}
            for op_id in ("1", "2"):
                started[op_id] = await start_answer(ws, QUESTION, op_id=op_id)
                assert (await next_frame(ws, started[op_id], op_id)).type == "next"
            frames = await answer_frames(ws, QUESTION, op_id="3")
            assert [f.type for f in frames] == ["next", "complete"]
            (error,) = frames[0].message["payload"]["errors"]
            assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}
            assert "MAX_ANSWER_STREAMS_PER_USER" in error["message"]

            # One stopped: the next answer runs.
            await ws.send(json.dumps({"id": "1", "type": "complete"}))
            await asyncio.sleep(0.2)
            ollama.chat_reply = None
            ollama.token_delay = 0.0
            assert kinds(events(await answer_frames(ws, QUESTION, op_id="4")))[-1] == "AnswerDone"


# --- rate limits ---------------------------------------------------------------------------


async def test_rate_limits_per_user_and_per_workspace(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    update = {
        "rate_limit_search_per_user": "3/minute",
        "rate_limit_search_per_workspace": "5/minute",
        "rate_limit_answer_per_user": "1/minute",
        "rate_limit_upload_per_user": "2/minute",
    }
    async with limited(gql, settings, **update) as client:
        token = await notes(client, inbox)  # one upload
        for _ in range(3):
            await client.data(SEARCH, {"q": QUESTION}, token=token)
        body = await client.execute(SEARCH, {"q": QUESTION}, token=token)
        assert body["data"] is None
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        retry_after = error["extensions"]["retryAfter"]
        assert 1 <= retry_after <= 60
        assert error["message"] == (
            f"Too many search requests from you (at most 3 per 1 minute); "
            f"try again in {retry_after} seconds"
        )
        # Each alias is a search.
        body = await client.execute('{ a: search(query: "x") { page } }', token=token)
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"

        # An API key counts as the user who created it (tests/test_fair_use.py); another
        # member has their own allowance, but shares the workspace's: 3 + 2 = 5 searches,
        # then the workspace's limit.
        async with sql(settings) as conn:
            workspace = str(await conn.fetchval("SELECT id FROM workspace WHERE personal LIMIT 1"))
        create = (
            'mutation($w: ID!) { createApiKey(workspaceId: $w, name: "ci", role: VIEWER) '
            "{ secret } }"
        )
        secret = (await client.data(create, {"w": workspace}, token=token))["createApiKey"]
        headers = {"X-API-Key": secret["secret"]}
        url = f"{client.base_url}/graphql"
        request = {"query": SEARCH, "variables": {"q": QUESTION}}
        body = (await client.http.post(url, json=request, headers=headers)).json()
        assert "from you (at most 3 per 1 minute)" in body["errors"][0]["message"], body
        other = await sign_up(client, inbox, "bob@example.com")
        async with sql(settings) as conn:  # a second member, made with SQL for brevity
            await conn.execute(
                "INSERT INTO membership (workspace_id, user_id, role) "
                "SELECT $1, id, 'VIEWER' FROM \"user\" WHERE email = 'bob@example.com'",
                uuid.UUID(workspace),
            )
        for _ in range(2):
            body = await client.execute(SEARCH, {"q": QUESTION}, token=other, workspace=workspace)
            assert "errors" not in body, body
        body = await client.execute(SEARCH, {"q": QUESTION}, token=other, workspace=workspace)
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert "from this workspace (at most 5 per 1 minute)" in body["errors"][0]["message"]

        # answer (and ask, which shares it) and uploads.
        async with socket_of(client, token) as ws:
            assert kinds(events(await answer_frames(ws, QUESTION)))[-1] == "AnswerDone"
            frames = await answer_frames(ws, QUESTION, op_id="2")
        (error,) = frames[0].message["payload"]["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["message"].startswith("Too many answer requests from you")
        ask = 'mutation { ask(question: "What does bread need?") { text } }'
        body = await client.execute(ask, token=token)
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"

        assert (await client.upload("b.pdf", make_pdf(["Rye."]), token=token)).json()["data"]
        body = (await client.upload("c.pdf", make_pdf(["Oat."]), token=token)).json()
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert "upload" in body["errors"][0]["message"]
        assert ollama.chat_requests == 1


# --- a client that does not read ------------------------------------------------------------


async def test_a_send_that_waits_too_long_drops_the_client() -> None:
    """`bounded`: a send stuck for WS_SEND_TIMEOUT fails as a disconnect, and the pending
    receive (the connection's handler waiting for client messages) answers disconnect."""
    stuck = asyncio.Event()

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client sends nothing
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message.get("text") == "stuck":
            await stuck.wait()  # the client reads nothing

    bounded_receive, bounded_send = bounded(receive, send, send_timeout=0.3)
    waiting: asyncio.Future[Message] = asyncio.ensure_future(bounded_receive())
    await bounded_send({"type": "websocket.send", "text": "fine"})
    started = time.monotonic()
    with pytest.raises(OSError, match="stopped reading"):
        await bounded_send({"type": "websocket.send", "text": "stuck"})
    assert 0.25 < time.monotonic() - started < 1
    assert await asyncio.wait_for(waiting, 1) == {"type": "websocket.disconnect", "code": 1006}
    with pytest.raises(OSError):
        await bounded_send({"type": "websocket.send", "text": "fine"})


async def test_a_client_that_stops_reading_is_dropped(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    words = 10_000  # of 2,000 letters each: 20 MB
    update = {
        "ws_send_timeout": 1.5,
        "max_answer_streams_per_user": 1,
        "answer_max_tokens": words,  # Ollama's num_predict: the whole reply
        "answer_continue_on_disconnect": False,  # the dropped client's answer stops
    }
    async with serve_server(settings.model_copy(update=update)) as served:
        client = GraphQLClient(gql.http, served.url)
        token = await notes(client, inbox)
        ollama.chat_reply = " ".join(["w" * 2000] * words)
        # A socket with a small receive buffer whose client library queues few messages:
        # once it stops reading, so does TCP. Without compression, as repetitive tokens
        # deflate to a few bytes and would take long to fill the kernel's buffers.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", int(client.base_url.rsplit(":", 1)[1])))
        url = client.base_url.replace("http://", "ws://") + "/graphql"
        protocols = [Subprotocol("graphql-transport-ws")]
        async with connect(
            url, sock=raw, subprotocols=protocols, max_queue=4, compression=None
        ) as ws:
            await init(ws, {"authorization": f"Bearer {token}"})
            started = await start_answer(ws, QUESTION)
            for _ in range(3):
                assert (await next_frame(ws, started)).type == "next"
            # Stop reading. Each message waits for room in the socket's buffers (asyncio's
            # 64 KiB, then the kernel's), so the server holds no more; one that waits over
            # WS_SEND_TIMEOUT drops the client: the answer is stored as interrupted, Ollama's
            # stream is closed, the user's one answer place is free again.
            deadline = time.monotonic() + 10
            while True:
                async with sql(settings) as conn:
                    status = await conn.fetchval(
                        "SELECT status FROM message WHERE role = 'assistant'"
                    )
                if status not in (None, "streaming"):  # stored while it streams
                    break
                assert time.monotonic() < deadline, ("never dropped", ollama.chat_tokens_sent)
                await asyncio.sleep(0.2)
            assert status == "interrupted"

            ollama.chat_reply = None
            async with socket_of(client, token) as other:
                assert kinds(events(await answer_frames(other, QUESTION)))[-1] == "AnswerDone"
            metrics = (await client.http.get(f"{served.metrics_url}/metrics")).text
            assert 'rag_gql_live_subscriptions{operation="answer"} 0.0' in metrics
