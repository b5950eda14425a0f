"""Subscriptions over HTTP (the multipart subscription protocol), through the real server with
httpx streaming: what `rag_gql.graphql.http_subscriptions` promises a client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from rag_gql.resources import Services
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.http_stream import (
    STREAM_ACCEPT,
    all_payloads,
    is_stream,
    open_stream,
    parts,
    payloads,
)
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve, serve_server
from tests.support.smtp import Inbox
from tests.support.sql import connect as sql

PAGES = [
    "Sourdough bread needs flour, water, salt and a lively starter.",
    "The lighthouse keeper counts ships passing the northern reef.",
]
QUESTION = "What does sourdough bread need?"
ANSWER = """
subscription($q: String!) {
  answer(question: $q, k: 2) {
    __typename
    ... on AnswerSources { sources { text document { filename } } }
    ... on AnswerToken { text }
    ... on AnswerDone { messageId citations { number filename document { id filename } } }
    ... on AnswerError { code message }
  }
}
"""
EVENTS = (
    "subscription($id: ID) { documentEvents(documentId: $id) { documentId status pagesTotal } }"
)
LONG_REPLY = " ".join(["word"] * 400)
DOCS = [Path(__file__).parents[1] / name for name in ("README.md", "docs/api.md")]


@asynccontextmanager
async def limited(
    gql: GraphQLClient, settings: Settings, **update: object
) -> AsyncIterator[GraphQLClient]:
    """A client of the app served with `update` applied to the test's settings."""
    async with serve(settings.model_copy(update=update)) as url:
        yield GraphQLClient(gql.http, url)


@asynccontextmanager
async def served(
    gql: GraphQLClient, settings: Settings, **update: object
) -> AsyncIterator[tuple[GraphQLClient, Services, str]]:
    """`limited`, also yielding the served app's services (the server runs in this loop) and the
    base URL of its operations listener (`/metrics`)."""
    async with serve_server(settings.model_copy(update=update)) as running:
        app = running.server.config.app
        assert isinstance(app, Starlette)
        yield GraphQLClient(gql.http, running.url), app.state.services, running.metrics_url


async def notes(gql: GraphQLClient, inbox: Inbox, email: str = "ada@example.com") -> str:
    """Signs up `email` and uploads notes.pdf (READY); returns the access token."""
    token = await sign_up(gql, inbox, email)
    response = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)
    assert response.json()["data"]["uploadDocument"]["status"] == "READY", response.text
    return token


def answer_events(received: list[Json]) -> list[Json]:
    """The `answer` events of a stream's payloads (asserting none has errors)."""
    for payload in received:
        assert not payload.get("errors"), payload
    return [payload["data"]["answer"] for payload in received]


async def refusal(response: httpx.Response) -> Json:
    """The one error of a JSON answer given instead of a stream."""
    assert not is_stream(response), response.headers
    assert response.headers["content-type"].startswith("application/json")
    body: Json = json.loads(await response.aread())
    assert body["data"] is None, body
    (error,) = body["errors"]
    return dict(error)


def stream_tasks() -> list[asyncio.Task[object]]:
    """Tasks of Strawberry's HTTP streams (the resolver's drain, the heartbeat) still alive."""
    return [
        task
        for task in asyncio.all_tasks()
        if "merge_stream_with_heartbeat" in getattr(task.get_coro(), "__qualname__", "")
    ]


async def eventually(check: object, timeout: float = 5.0) -> None:
    """Waits until `check()` is true."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.05)


# --- the streams -------------------------------------------------------------------------------


async def test_an_answer_streams_tokens_and_citations_as_multipart_parts(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    token = await notes(gql, inbox)
    async with open_stream(gql, ANSWER, {"q": QUESTION}, token=token) as response:
        assert response.status_code == 200
        content_type = response.headers["content-type"]
        assert content_type.startswith("multipart/mixed;boundary=graphql;subscriptionSpec=1.0")
        received = [part async for part in parts(response)]
    assert received[0] == {}, received[0]  # the heartbeat that opens the stream
    events = answer_events([part["payload"] for part in received if part])
    kinds = [event["__typename"] for event in events]
    assert kinds[0] == "AnswerSources" and kinds[-1] == "AnswerDone", kinds
    assert set(kinds[1:-1]) == {"AnswerToken"}, kinds
    assert "Sourdough bread needs flour" in events[0]["sources"][0]["text"]
    text = "".join(event["text"] for event in events[1:-1])
    assert text.startswith("According to the sources,") and text.endswith("[1]."), text
    (citation,) = events[-1]["citations"]
    assert citation["number"] == 1 and citation["filename"] == "notes.pdf"
    assert citation["document"]["filename"] == "notes.pdf"
    async with sql(settings) as conn:
        status = await conn.fetchval("SELECT status FROM message WHERE role = 'assistant'")
    assert status == "complete"


async def test_document_events_deliver_ready_for_an_upload(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    async with open_stream(gql, EVENTS, {"id": None}, token=token) as everything:
        stream = payloads(everything)
        await asyncio.sleep(0.5)  # listening
        upload = await gql.upload("notes.pdf", make_pdf(PAGES), token=token, wait=False)
        document_id = upload.json()["data"]["uploadDocument"]["id"]
        # One document, by id: its state now, its changes, and the stream completes at READY.
        async with open_stream(gql, EVENTS, {"id": document_id}, token=token) as one:
            events = [p["data"]["documentEvents"] for p in await all_payloads(one)]
        assert {event["documentId"] for event in events} == {document_id}
        assert events[-1] == {"documentId": document_id, "status": "READY", "pagesTotal": 2}
        # The workspace's documents: the same document's statuses, live, up to READY.
        seen: list[str] = []
        async with asyncio.timeout(30):
            while not seen or seen[-1] != "READY":
                payload = await anext(stream)
                assert payload["data"]["documentEvents"]["documentId"] == document_id
                seen.append(payload["data"]["documentEvents"]["status"])
        assert "PARSING" in seen or "EMBEDDING" in seen, seen


async def test_credentials_are_the_request_headers(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"X-API-Key": "rgk_nonsense"}):
        async with open_stream(gql, EVENTS, headers=headers) as response:
            assert response.status_code == 200
            error = await refusal(response)
        assert error["extensions"] == {"code": "UNAUTHENTICATED"}, (headers, error)
    # A workspace that is not the caller's reads like one that does not exist.
    stranger = await sign_up(gql, inbox, "bob@example.com")
    theirs = (await gql.data("{ workspaces { id } }", token=stranger))["workspaces"][0]["id"]
    for workspace in (theirs, "not-an-id"):
        headers = {"X-Workspace-Id": workspace}
        async with open_stream(gql, EVENTS, headers=headers, token=token) as response:
            error = await refusal(response)
        assert error == {"message": "Workspace not found", "extensions": {"code": "NOT_FOUND"}}
    # An API key, in either header.
    mine = (await gql.data("{ workspaces { id } }", token=token))["workspaces"][0]["id"]
    create = (
        'mutation($w: ID!) { createApiKey(workspaceId: $w, name: "ci", role: VIEWER) { secret } }'
    )
    secret = (await gql.data(create, {"w": mine}, token=token))["createApiKey"]["secret"]
    for headers in ({"X-API-Key": secret}, {"Authorization": f"Bearer {secret}"}):
        async with open_stream(gql, EVENTS, headers=headers) as response:
            assert is_stream(response)
            assert await anext(parts(response)) == {}


async def test_a_subscription_without_the_stream_accept_is_a_400(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    url = f"{gql.base_url}/graphql"
    auth = {"Authorization": f"Bearer {token}"}
    for accept in ("application/json", "application/graphql-response+json", "*/*"):
        response = await gql.http.post(
            url, json={"query": EVENTS}, headers={**auth, "Accept": accept}
        )
        assert response.status_code == 400, response.text
        (error,) = response.json()["errors"]
        assert error["extensions"] == {"code": "BAD_REQUEST"}
        assert STREAM_ACCEPT in error["message"] and "WebSocket" in error["message"]
    response = await gql.http.get(url, params={"query": EVENTS}, headers=auth)
    assert response.status_code == 400 and "BAD_REQUEST" in response.text
    # A query sent as a stream is refused in the stream, as plainly.
    async with open_stream(gql, "{ me { email } }", token=token) as response:
        (payload,) = await all_payloads(response)
    (error,) = payload["errors"]
    assert error["extensions"] == {"code": "BAD_REQUEST"}, error
    assert "application/json" in error["message"]
    # The operations that are not subscriptions are unaffected.
    assert (await gql.data("{ me { email } }", token=token))["me"]["email"] == "ada@example.com"


# --- limits ------------------------------------------------------------------------------------


async def test_streams_share_the_websocket_caps(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    update = {"max_websockets_per_user": 2, "ws_max_operations_per_user": 3}
    async with limited(gql, settings, **update) as client:
        token = await sign_up(client, inbox, "ada@example.com")
        other = await sign_up(client, inbox, "bob@example.com")
        async with (
            open_stream(client, EVENTS, token=token) as first,
            open_stream(client, EVENTS, token=token) as second,
        ):
            assert is_stream(first) and is_stream(second)
            async with open_stream(client, EVENTS, token=token) as third:
                error = await refusal(third)
            assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}, error
            assert "of this user" in error["message"]
            assert "at most 2, MAX_WEBSOCKETS_PER_USER" in error["message"]
            # The budget is the WebSockets': no socket for this user either.
            async with client.websocket() as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await init(ws, {"authorization": f"Bearer {token}"})
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
            # Another user is not affected.
            async with open_stream(client, EVENTS, token=other) as theirs:
                assert is_stream(theirs)
        # Ended streams give their places back; the live operations count too.
        async with client.websocket() as ws:
            assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == (
                "connection_ack"
            )
            for op_id in ("a", "b", "c"):
                message = {"query": EVENTS, "variables": {}}
                await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": message}))
            await asyncio.sleep(0.3)
            async with open_stream(client, EVENTS, token=token) as fourth:
                error = await refusal(fourth)
            assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}
            assert "live operations" in error["message"], error
            assert "WS_MAX_OPERATIONS_PER_USER" in error["message"]
        await asyncio.sleep(0.3)
        async with open_stream(client, EVENTS, token=token) as again:
            assert is_stream(again)

    async with limited(gql, settings, max_websockets_per_ip=1) as client:
        token = await sign_up(client, inbox, "cyd@example.com")
        async with open_stream(client, EVENTS, token=token) as first:
            assert is_stream(first)
            # Refused before any credential is looked at.
            async with open_stream(client, EVENTS) as anonymous:
                error = await refusal(anonymous)
            assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}
            assert "from this address" in error["message"]
            assert "MAX_WEBSOCKETS_PER_IP" in error["message"]


async def test_the_operation_limits_apply(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    update = {"rate_limit_answer_per_user": "1/minute", "graphql_max_aliases": 1}
    async with limited(gql, settings, **update) as client:
        token = await notes(client, inbox)
        async with open_stream(client, ANSWER, {"q": QUESTION}, token=token) as response:
            assert answer_events(await all_payloads(response))[-1]["__typename"] == "AnswerDone"
        async with open_stream(client, ANSWER, {"q": QUESTION}, token=token) as response:
            (payload,) = await all_payloads(response)
        (error,) = payload["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED", error
        assert error["message"].startswith("Too many answer requests from you")

        aliased = "subscription { documentEvents { a: status b: status } }"
        async with open_stream(client, aliased, token=token) as response:
            (payload,) = await all_payloads(response)
        assert payload["errors"][0]["extensions"] == {"code": "TOO_MANY_ALIASES"}, payload
        deep = 'subscription { answer(question: "q") { ' + "... on AnswerDone { " * 12
        deep += "__typename" + " }" * 13 + " }"
        async with open_stream(client, deep, token=token) as response:
            (payload,) = await all_payloads(response)
        assert payload["data"] is None and payload["errors"], payload

        # The body limit: refused with 413 before anything else.
        big = {"query": EVENTS, "variables": {"pad": "x" * (settings.graphql_max_body_bytes + 1)}}
        response = await client.http.post(
            f"{client.base_url}/graphql",
            json=big,
            headers={"Accept": STREAM_ACCEPT, "Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 413
        assert response.json()["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert ollama.chat_requests == 1


async def test_a_long_stream_outlives_the_request_timeouts(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    update = {"db_statement_timeout": 0.5, "db_idle_in_transaction_timeout": 0.5}
    async with limited(gql, settings, **update) as client:
        token = await notes(client, inbox)
        ollama.chat_reply = " ".join(["word"] * 30)
        ollama.token_delay = 0.08  # about 2.4 s of tokens, and heartbeats between
        started = time.monotonic()
        async with open_stream(client, ANSWER, {"q": QUESTION}, token=token) as response:
            events = answer_events(await all_payloads(response))
        assert time.monotonic() - started > 2
        assert events[-1]["__typename"] == "AnswerDone", events[-1]
        tokens = [event["text"] for event in events if event["__typename"] == "AnswerToken"]
        assert "".join(tokens).split() == ["word"] * 30


# --- a client that goes ------------------------------------------------------------------------


async def test_a_client_that_goes_away_releases_everything(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    """With ANSWER_CONTINUE_ON_DISCONNECT=false, so that its answers stop with it (by default
    they run on: tests/test_answer_stream.py)."""
    update = {"answer_continue_on_disconnect": False}
    async with served(gql, settings, **update) as (client, services, metrics_url):
        token = await notes(client, inbox)
        ollama.chat_reply = LONG_REPLY
        ollama.token_delay = 0.05
        for _ in range(3):  # more than the user's answers at once (3): each frees its place
            async with open_stream(client, ANSWER, {"q": QUESTION}, token=token) as response:
                stream = payloads(response)
                first = answer_events([await anext(stream)])[0]
                assert first["__typename"] == "AnswerSources"
                assert answer_events([await anext(stream)])[0]["__typename"] == "AnswerToken"
                assert services.generation.streams.total == 1
                assert stream_tasks()
            # Gone: the answer is cancelled and stored as interrupted.
            await eventually(lambda: services.generation.streams.total == 0)
        async with open_stream(client, EVENTS, token=token) as response:
            events = parts(response)
            assert await anext(events) == {}
            await asyncio.sleep(0.3)
            assert services.ws_operations.total == 1, [p async for p in events]
        await eventually(lambda: not stream_tasks())
        for slots in (
            services.ws_operations,
            services.websockets_per_user,
            services.websockets_per_ip,
            services.generation.streams,
        ):
            assert slots.total == 0, slots.what
        pool = services.db.engine.pool
        await eventually(lambda: pool.checkedout() == 0)  # type: ignore[attr-defined]
        metrics = (await client.http.get(f"{metrics_url}/metrics")).text
        assert 'rag_gql_live_subscriptions{operation="answer"} 0.0' in metrics
        async with sql(settings) as conn:
            statuses = await conn.fetch("SELECT status FROM message WHERE role = 'assistant'")
        assert [row["status"] for row in statuses] == ["interrupted"] * 3
        ollama.chat_reply = None
        ollama.token_delay = 0.0
        async with open_stream(client, ANSWER, {"q": QUESTION}, token=token) as response:
            assert answer_events(await all_payloads(response))[-1]["__typename"] == "AnswerDone"


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
    async with served(gql, settings, **update) as (client, services, _metrics_url):
        token = await notes(client, inbox)
        ollama.chat_reply = " ".join(["w" * 2000] * words)
        # A socket with a small receive buffer, read through asyncio's 64 KiB buffer: once the
        # test stops reading, so does TCP.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = client.base_url.removeprefix("http://").split(":")
        raw.connect((host, int(port)))
        raw.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=raw)
        body = json.dumps({"query": ANSWER, "variables": {"q": QUESTION}}).encode()
        head = (
            f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Accept: {STREAM_ACCEPT}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await reader.readexactly(200_000)  # tokens are streaming
        # Stop reading. Each part waits for room in the socket's buffers, so the server holds
        # no more; one that waits over WS_SEND_TIMEOUT drops the client: the answer is
        # stored as interrupted, the user's one answer place is free again.
        deadline = time.monotonic() + 15
        while True:
            async with sql(settings) as conn:
                status = await conn.fetchval("SELECT status FROM message WHERE role = 'assistant'")
            if status not in (None, "streaming"):  # stored while it streams
                break
            assert time.monotonic() < deadline, ("never dropped", ollama.chat_tokens_sent)
            await asyncio.sleep(0.2)
        assert status == "interrupted"
        await eventually(lambda: services.ws_operations.total == 0)
        writer.close()

        ollama.chat_reply = None
        async with open_stream(client, ANSWER, {"q": QUESTION}, token=token) as response:
            assert answer_events(await all_payloads(response))[-1]["__typename"] == "AnswerDone"


def documented_curl() -> str:
    """The `curl -N` example of the docs' "Subscriptions over HTTP" section."""
    for doc in DOCS:
        text = doc.read_text("utf-8") if doc.exists() else ""
        _, found, section = text.partition("Subscriptions over HTTP\n")
        if found:
            command = section.split("```sh\n", 1)[1].split("```", 1)[0]
            assert command.startswith("curl -N "), command
            return command
    raise AssertionError(f"no 'Subscriptions over HTTP' section in {DOCS}")


async def test_the_documented_curl_example_streams_an_answer(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await notes(gql, inbox)
    command = documented_curl().replace("http://127.0.0.1:8000", gql.base_url)
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        env={"TOKEN": token, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    text = out.decode()
    assert '{"payload":{"data":{"answer":{"__typename":"AnswerToken","text":' in text, text
    assert '"__typename":"AnswerDone","citations":' in text, text
    assert text.rstrip().endswith("--graphql--"), text
