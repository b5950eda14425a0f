"""A failing Ollama: each failure is a typed error, nothing is half-written, and the server is
healthy afterwards. Retries and the circuit breaker of `OllamaClient`.

Covered elsewhere: an HTTP error before the sources (test_answer: UPSTREAM_ERROR, no event)
and after them (test_answer: an AnswerError event); a stream dropped mid-answer
(test_answer: UPSTREAM_UNAVAILABLE event, the socket stays usable; here: what is stored);
Ollama unreachable in /readyz (test_observability).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from rag_gql.config import Settings
from rag_gql.errors import UpstreamError, UpstreamUnavailable
from rag_gql.providers.ollama import ChatDelta, CircuitOpen, EmbeddingSizeMismatch, OllamaClient
from rag_gql.resources import StartupError, open_services
from tests.support.accounts import sign_up
from tests.support.answers import answer_frames, events, kinds
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import OllamaStandin, StandinState, split_tokens
from tests.support.pdfs import make_pdf
from tests.support.serving import Served, serve_server
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error

PAGES = [
    "Sourdough bread needs flour, water, salt and a lively starter.",
    "The lighthouse keeper counts ships passing the northern reef.",
]
QUESTION = "What does sourdough bread need?"
SEARCH = "query($q: String!) { search(query: $q, k: 2) { page } }"
REPLY = "Bread needs flour, water and salt, and a lively starter [1]."


@asynccontextmanager
async def served(settings: Settings, **update: object) -> AsyncIterator[Served]:
    """Serves the app with `update` applied to `settings`; yields its listeners."""
    async with serve_server(settings.model_copy(update=update)) as running:
        yield running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def notes(gql: GraphQLClient, inbox: Inbox) -> str:
    """Signs up ada@example.com with notes.pdf (PAGES) ingested; returns her token."""
    token = await sign_up(gql, inbox, "ada@example.com")
    response = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)
    assert response.json()["data"]["uploadDocument"]["status"] == "READY", response.text
    return token


async def answer(gql: GraphQLClient, token: str, op_id: str = "1") -> list[Json]:
    """Runs one `answer` over a fresh socket; returns its events (it must complete)."""
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        return events(await answer_frames(ws, QUESTION, op_id=op_id))


async def stored_answers(settings: Settings) -> list[tuple[str, str]]:
    """(status, content) of every stored assistant message, oldest first."""
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT status, content FROM message WHERE role = 'assistant' ORDER BY created_at"
        )
    return [(row["status"], row["content"]) for row in rows]


async def conversation_count(settings: Settings) -> int:
    async with connect(settings) as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM conversation")
        return count


# --- Ollama down at start, then up ----------------------------------------------------------


async def test_ollama_down_at_start_fails_fast_then_recovers(
    settings: Settings, gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    port = free_port()  # nothing listens there until the stand-in below starts
    down = settings.model_copy(
        update={
            "ollama_url": f"http://127.0.0.1:{port}",
            "ollama_breaker_threshold": 2,
            "ollama_breaker_reset": 3.0,
            "ollama_embed_attempts": 2,
        }
    )
    async with serve_server(down) as running, httpx.AsyncClient(timeout=10) as http:
        url, metrics_url = running.url, running.metrics_url
        gql = GraphQLClient(http, url)
        token = await sign_up(gql, inbox, "ada@example.com")
        body = await gql.execute(SEARCH, {"q": QUESTION}, token=token)
        assert_error(body, "UPSTREAM_UNAVAILABLE")
        # The circuit is open now: the next call fails at once, without trying Ollama.
        started = time.monotonic()
        body = await gql.execute(SEARCH, {"q": QUESTION}, token=token)
        assert time.monotonic() - started < 0.5
        assert "refused for a while" in assert_error(body, "UPSTREAM_UNAVAILABLE")
        ready = await http.get(f"{metrics_url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["ollama"] == {"ok": False, "error": "circuit_open"}

        # An answer fails before its first event, and leaves no conversation behind.
        async with gql.websocket() as ws:
            await init(ws, {"authorization": f"Bearer {token}"})
            frames = await answer_frames(ws, QUESTION)
        assert [f.type for f in frames] == ["next", "complete"]
        assert_error(frames[0].message["payload"], "UPSTREAM_UNAVAILABLE")
        assert await conversation_count(settings) == 0

        # Ollama comes up: once the circuit lets a call through, everything works again.
        with OllamaStandin(StandinState(dim=ollama.dim), port=port):
            deadline = time.monotonic() + 10
            while (await http.get(f"{metrics_url}/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                await asyncio.sleep(0.3)
            response = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)
            assert response.json()["data"]["uploadDocument"]["status"] == "READY"
            assert (await gql.data(SEARCH, {"q": QUESTION}, token=token))["search"]
            assert kinds(await answer(gql, token))[-1] == "AnswerDone"
        assert [status for status, _ in await stored_answers(settings)] == ["complete"]


async def test_a_hybrid_search_whose_embedding_fails_leaves_no_connection_behind(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    # HYBRID ranks by keyword in a transaction of its own while the query is embedded: when
    # the embedding fails, that transaction ends too. With two pooled connections, two leaked
    # or still-open ones would leave the next request waiting for SERVER_BUSY.
    async with (
        served(settings, db_pool_size=2, db_max_overflow=0, db_pool_timeout=2.0) as running,
        httpx.AsyncClient(timeout=10) as http,
    ):
        gql = GraphQLClient(http, running.url)
        token = await notes(gql, inbox)
        for knobs in ({"fail_status": 500}, {"fail_status": 500, "delay": 0.3}):
            for name, value in knobs.items():
                setattr(ollama, name, value)
            body = await gql.execute(SEARCH, {"q": QUESTION}, token=token)
            assert_error(body, "UPSTREAM_ERROR")
            ollama.reset()
        assert (await gql.data(SEARCH, {"q": QUESTION}, token=token))["search"]


# --- failures in the middle of an answer ----------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "code", "says"),
    [
        ({"die_after_tokens": 3}, "UPSTREAM_UNAVAILABLE", "Ollama"),
        ({"garbage_after_tokens": 3}, "UPSTREAM_ERROR", "malformed line"),
        (
            {"error_after_tokens": 3, "fail_message": "CUDA error: out of memory"},
            "UPSTREAM_ERROR",
            "CUDA error: out of memory",
        ),
        ({"first_token_delay": 2.5}, "UPSTREAM_UNAVAILABLE", "ReadTimeout"),
    ],
    ids=["down-mid-stream", "garbage-ndjson", "error-object", "first-token-too-slow"],
)
async def test_a_broken_answer_is_an_error_event_stored_as_failed(
    settings: Settings,
    gql: GraphQLClient,
    inbox: Inbox,
    ollama: StandinState,
    knobs: dict[str, object],
    code: str,
    says: str,
) -> None:
    async with served(settings, ollama_timeout=1.0) as running:
        gql = GraphQLClient(gql.http, running.url)
        token = await notes(gql, inbox)
        ollama.chat_reply = REPLY
        for name, value in knobs.items():
            setattr(ollama, name, value)
        got = await answer(gql, token)
        sent = split_tokens(REPLY)[: 0 if "first_token_delay" in knobs else 3]
        names = kinds(got)
        assert (names[0], names[-1]) == ("AnswerSources", "AnswerError"), names
        assert set(names[1:-1]) <= {"AnswerToken"}, names  # tokens that came together: one
        texts = "".join(str(e["text"]) for e in got if e["__typename"] == "AnswerToken")
        assert texts == "".join(sent)
        assert got[-1]["code"] == code
        assert says in got[-1]["message"], got[-1]
        assert "Traceback" not in got[-1]["message"]
        # What the client saw is stored, marked failed: no half-written answer.
        assert await stored_answers(settings) == [("failed", "".join(sent))]

        # Healthy afterwards, Ollama's breaker included.
        ollama.reset()
        assert kinds(await answer(gql, token))[-1] == "AnswerDone"
        assert (await gql.http.get(f"{running.metrics_url}/readyz")).status_code == 200


async def test_a_slow_first_token_within_the_timeout_is_waited_for(
    settings: Settings, gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    async with served(settings, ollama_timeout=2.0) as running:
        gql = GraphQLClient(gql.http, running.url)
        token = await notes(gql, inbox)
        ollama.first_token_delay = 1.0
        got = await answer(gql, token)
    assert kinds(got)[-1] == "AnswerDone"
    assert got[-1]["timeToFirstTokenMs"] >= 1000


# --- configuration that does not match Ollama -----------------------------------------------


async def test_a_model_that_is_not_pulled(
    settings: Settings, gql: GraphQLClient, inbox: Inbox, ollama: StandinState, metrics_url: str
) -> None:
    token = await notes(gql, inbox)
    ollama.unpulled = frozenset({ollama.chat_model})
    ready = await gql.http.get(f"{metrics_url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["ollama"] == {
        "ok": False,
        "error": "models_missing",
        "missingModels": ["llama3.2"],
    }
    got = await answer(gql, token)
    assert kinds(got) == ["AnswerSources", "AnswerError"]
    assert got[-1]["code"] == "UPSTREAM_ERROR"
    assert 'model "llama3.2" not found, try pulling it first' in got[-1]["message"]
    assert await stored_answers(settings) == [("failed", "")]

    ollama.unpulled = frozenset({ollama.embed_model})
    # (Another question: the answer's is kept embedded, `QUERY_EMBEDDING_CACHE_SIZE`.)
    body = await gql.execute(SEARCH, {"q": "What does rye bread need?"}, token=token)
    assert_error(body, "UPSTREAM_ERROR", "nomic-embed-text", "try pulling it first")

    ollama.unpulled = frozenset()
    assert (await gql.http.get(f"{metrics_url}/readyz")).status_code == 200
    assert kinds(await answer(gql, token))[-1] == "AnswerDone"


async def test_a_wrong_embedding_dimension(
    settings: Settings, gql: GraphQLClient, inbox: Inbox, ollama: StandinState, server_url: str
) -> None:
    token = await notes(gql, inbox)
    ollama.wrong_dim = ollama.dim + 44
    body = await gql.execute(SEARCH, {"q": QUESTION}, token=token)
    message = assert_error(body, "UPSTREAM_ERROR")
    assert f"{ollama.dim + 44}-dimensional" in message and f"EMBED_DIM is {ollama.dim}" in message

    # An upload fails as a document, with the reason, and stores no chunk.
    response = await gql.upload("more.pdf", make_pdf(["Rye bread is dense."]), token=token)
    document = response.json()["data"]["uploadDocument"]
    assert document["status"] == "FAILED"
    async with connect(settings) as conn:
        chunks = await conn.fetchval(
            "SELECT count(*) FROM chunk WHERE document_id = $1::uuid", document["id"]
        )
    assert chunks == 0

    ollama.wrong_dim = None
    assert (await gql.data(SEARCH, {"q": QUESTION}, token=token))["search"]


async def test_a_wrong_embedding_dimension_at_start_refuses_to_start(
    settings: Settings, ollama: StandinState
) -> None:
    ollama.wrong_dim = ollama.dim * 2
    with pytest.raises(StartupError, match=f"returns {ollama.dim * 2}-dimensional"):
        async with open_services(settings):
            pass


# --- the client: retries and the circuit breaker --------------------------------------------


def _flaky(failures: int) -> tuple[httpx.MockTransport, list[str]]:
    """A transport whose first `failures` requests cannot connect; then `/api/embed` works."""
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) <= failures:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"embeddings": [[0.5, 0.5]]})

    return httpx.MockTransport(handle), calls


async def test_embeddings_are_retried_chat_is_not() -> None:
    transport, calls = _flaky(2)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as http:
        client = OllamaClient(http, embed_model="e", chat_model="c", embed_dim=2, embed_attempts=3)
        assert await client.embed(["hi"]) == [[0.5, 0.5]]
        assert calls == ["/api/embed"] * 3

    transport, calls = _flaky(1)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as http:
        client = OllamaClient(http, embed_model="e", chat_model="c", embed_attempts=3)
        with pytest.raises(UpstreamUnavailable):
            async for _ in client.chat_stream([]):
                pass
        assert calls == ["/api/chat"]

    transport, calls = _flaky(0)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as http:
        client = OllamaClient(http, embed_model="e", chat_model="c", embed_dim=3)
        with pytest.raises(EmbeddingSizeMismatch, match="2-dimensional"):
            await client.embed(["hi"])


async def test_the_circuit_opens_fails_fast_and_closes_again() -> None:
    transport, calls = _flaky(4)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as http:
        client = OllamaClient(
            http,
            embed_model="e",
            chat_model="c",
            embed_attempts=1,
            breaker_threshold=3,
            breaker_reset=0.5,
        )
        for _ in range(3):
            with pytest.raises(UpstreamUnavailable) as failed:
                await client.embed(["hi"])
            assert not isinstance(failed.value, CircuitOpen)
        for _ in range(5):  # open: refused without a request
            with pytest.raises(CircuitOpen):
                await client.embed(["hi"])
            with pytest.raises(CircuitOpen):
                await client.ping()
        assert len(calls) == 3
        await asyncio.sleep(0.6)
        with pytest.raises(UpstreamUnavailable):  # half-open: one try, which fails: open again
            await client.embed(["hi"])
        with pytest.raises(CircuitOpen):
            await client.embed(["hi"])
        await asyncio.sleep(0.6)
        assert await client.embed(["hi"]) == [[0.5, 0.5]]  # the try succeeds: closed
        assert await client.embed(["hi"]) == [[0.5, 0.5]]
        assert len(calls) == 6


def _chat_line(text: str, *, done: bool = False) -> str:
    line: Json = {"message": {"role": "assistant", "content": text}, "done": done}
    if done:
        line |= {"prompt_eval_count": 7, "eval_count": 3}
    return json.dumps(line) + "\n"


async def _chat_deltas(chunks: list[str]) -> list[ChatDelta]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk.encode()

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    transport = httpx.MockTransport(handle)
    async with httpx.AsyncClient(transport=transport, base_url="http://ollama") as http:
        client = OllamaClient(http, embed_model="e", chat_model="c")
        return [delta async for delta in client.chat_stream([])]


async def test_lines_that_arrive_together_are_one_delta() -> None:
    """One delta per read: lines already waiting (this process fell behind) go on together,
    a line split over reads waits for its end, and `done` keeps its counters."""
    one, two, three = _chat_line("Sour"), _chat_line("dough"), _chat_line(" bread")
    deltas = await _chat_deltas([one + two, three[:9], three[9:] + _chat_line(".", done=True)])
    assert [d.text for d in deltas] == ["Sourdough", " bread."]
    assert [d.done for d in deltas] == [False, True]
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (7, 3)

    # A bad line ends the stream with an error, after the text that came before it.
    got: list[str] = []
    with pytest.raises(UpstreamError, match="malformed"):
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda _: httpx.Response(200, content=(one + "{nope\n").encode())
            ),
            base_url="http://ollama",
        ) as http:
            client = OllamaClient(http, embed_model="e", chat_model="c")
            async for delta in client.chat_stream([]):
                got.append(delta.text)
    assert got == ["Sour"]
