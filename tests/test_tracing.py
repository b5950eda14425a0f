"""OpenTelemetry tracing: a request through the real app is one trace (the HTTP or WebSocket
span, the GraphQL operation, its SQL statements and Ollama calls), nothing secret is recorded,
work outside requests is not traced; and the switch: off, nothing of OpenTelemetry is
imported; asked for without the extra, a clear error."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import rag_gql.observability
from rag_gql.config import Settings
from rag_gql.observability.otel import Tracing
from rag_gql.observability.tracing import TracingSetupError, requested_exporters, setup_tracing
from tests.support.accounts import PASSWORD, sign_up
from tests.support.answers import answer_frames, events, next_frame, start_answer
from tests.support.graphql_client import GraphQLClient, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve, serve_server
from tests.support.smtp import Inbox
from tests.support.uploads import upload_ok

PAGES = [
    "Sourdough bread needs flour, water, salt and a lively starter.",
    "The lighthouse keeper counts ships passing the northern reef.",
]
SEARCH = 'query Find { search(query: "lighthouse keeper", k: 2, mode: VECTOR) { text } }'


@pytest.fixture
def traced() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    """Tracing as `rag-gql serve` sets it up, exporting to memory; shut down afterwards."""
    exporter = InMemorySpanExporter()
    tracing = setup_tracing({}, exporter=exporter)
    assert tracing is not None
    yield tracing, exporter
    tracing.shutdown()


class Trace:
    """The finished spans of one trace, with their parents."""

    def __init__(self, spans: Sequence[ReadableSpan], trace_id: int) -> None:
        self.spans = [s for s in spans if _context(s)[0] == trace_id]
        self._by_id = {_context(s)[1]: s for s in self.spans}

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self._by_id.get(span.parent.span_id) if span.parent else None

    def inside(self, span: ReadableSpan, ancestor: ReadableSpan) -> bool:
        """Whether `ancestor` is `span`'s parent, or its parent's, and so on."""
        parent = self.parent(span)
        while parent is not None:
            if parent is ancestor:
                return True
            parent = self.parent(parent)
        return False

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans if s.name == name]
        return span

    def sql(self) -> list[ReadableSpan]:
        return [s for s in self.spans if _attribute(s, "db.system", "db.system.name")]

    def ollama(self, path: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans
            if s.kind is SpanKind.CLIENT and _attribute(s, "http.url", "url.full").endswith(path)
        ]


def _context(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def _attribute(span: ReadableSpan, *names: str) -> str:
    attributes = span.attributes or {}
    return next((str(attributes[n]) for n in names if n in attributes), "")


def _request_span(spans: Sequence[ReadableSpan], request_id: str) -> ReadableSpan:
    (span,) = [
        s
        for s in spans
        if s.kind is SpanKind.SERVER and _attribute(s, "rag_gql.request_id") == request_id
    ]
    return span


def _assert_only_requests(spans: Sequence[ReadableSpan]) -> None:
    """Every trace starts with a request (the probes and the ingestion worker make none)."""
    for span in spans:
        if span.parent is None:
            assert span.kind is SpanKind.SERVER, span.name
        assert not any(path in span.name for path in ("healthz", "readyz", "metrics")), span.name


def _assert_no_secrets(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    for span in spans:
        recorded = " ".join([span.name, *(str(v) for v in (span.attributes or {}).values())])
        for event in span.events:
            recorded += " ".join(str(v) for v in (event.attributes or {}).values())
        for secret in secrets:
            assert secret not in recorded, (span.name, secret)


async def test_an_http_request_is_one_trace(
    settings: Settings,
    inbox: Inbox,
    ollama: StandinState,
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = traced
    async with (
        serve_server(settings, tracing=tracing) as served,
        httpx.AsyncClient(timeout=30) as http,
    ):
        url = served.url
        token = await sign_up(GraphQLClient(http, url), inbox, "ada@example.com")
        response = await http.post(
            f"{url}/graphql", json={"query": SEARCH}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200 and "errors" not in response.json(), response.text
        # Probes and scrapes are not traced, nor their SQL and Ollama calls.
        assert (await http.get(f"{url}/healthz")).status_code == 200
        assert (await http.get(f"{served.metrics_url}/readyz")).status_code == 200
        assert (await http.get(f"{served.metrics_url}/metrics")).status_code == 200
    assert tracing.force_flush()
    spans = exporter.get_finished_spans()

    request = _request_span(spans, response.headers["x-request-id"])
    assert request.name == "POST /graphql"
    assert request.parent is None
    found = Trace(spans, _context(request)[0])
    operation = found.named("query Find")
    assert found.parent(operation) is request
    assert operation.attributes == {
        "rag_gql.request_id": response.headers["x-request-id"],
        "graphql.operation.type": "query",
        "graphql.operation.name": "Find",
        "rag_gql.outcome": "ok",
    }
    assert found.parent(found.named("GraphQL Resolving: search")) is operation
    # Authentication, the search's statements and its query embedding, all in the operation.
    statements = found.sql()
    assert statements and all(found.inside(s, operation) for s in statements)
    assert any(_attribute(s, "db.statement", "db.query.text") for s in statements)
    assert not {s.name for s in statements} & {"BEGIN", "COMMIT", "ROLLBACK"}, "statements only"
    (embed,) = found.ollama("/api/embed")
    assert found.inside(embed, operation)
    assert _attribute(embed, "http.status_code", "http.response.status_code") == "200"

    _assert_only_requests(spans)
    # Neither the document (its literal query) nor argument values (the password) are kept.
    _assert_no_secrets(spans, PASSWORD, token, "lighthouse keeper")


async def test_a_hybrid_search_ranks_by_keyword_while_the_query_is_embedded(
    settings: Settings,
    inbox: Inbox,
    ollama: StandinState,
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = traced
    async with serve(settings, tracing=tracing) as url, httpx.AsyncClient(timeout=30) as http:
        gql = GraphQLClient(http, url)
        token = await sign_up(gql, inbox, "ada@example.com")
        await upload_ok(gql, "notes.pdf", make_pdf(PAGES), token)
        ollama.delay = 0.5  # the embedding takes half a second
        query = '{ search(query: "lighthouse keeper", k: 2, mode: HYBRID) { page keywordRank } }'
        response = await http.post(
            f"{url}/graphql", json={"query": query}, headers={"Authorization": f"Bearer {token}"}
        )
        body = response.json()
        assert body["data"]["search"][0] == {"page": 2, "keywordRank": 1}, body
    assert tracing.force_flush()
    spans = exporter.get_finished_spans()
    found = Trace(spans, _context(_request_span(spans, response.headers["x-request-id"]))[0])
    (embed,) = found.ollama("/api/embed")
    # The BM25 ranking's statements (MaxScore may run a second, unpruned one).
    keyword = [s for s in found.sql() if "bm25_delta" in _attribute(s, "db.statement")]
    assert keyword and embed.start_time and embed.end_time
    first = min(s.start_time or 0 for s in keyword)
    last = max(s.end_time or 0 for s in keyword)
    # The keyword ranking ran while the embedding was under way, not after it.
    assert embed.start_time - 100_000_000 < first < embed.end_time, "overlap"
    assert last < embed.end_time


async def test_a_websocket_operation_is_a_trace_of_its_own(
    settings: Settings,
    inbox: Inbox,
    ollama: StandinState,
    traced: tuple[Tracing, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing, exporter = traced
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    async with serve(settings, tracing=tracing) as url, httpx.AsyncClient(timeout=30) as http:
        gql = GraphQLClient(http, url)
        token = await sign_up(gql, inbox, "grace@example.com")
        uploaded = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)  # a worker's job
        assert uploaded.json()["data"]["uploadDocument"]["status"] == "READY", uploaded.text
        async with gql.websocket() as ws:
            assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == (
                "connection_ack"
            )
            # Tokens further apart than ANSWER_TOKEN_WINDOW_MS: an event each, several events.
            ollama.token_delay = 0.05
            got = events(await answer_frames(ws, "What does sourdough bread need?"))
            # Another answer, stopped by the client after its sources and a token.
            ollama.chat_reply, ollama.token_delay = " ".join(["word"] * 30), 0.1
            # (Another question: the first one's embedding is kept, and reused.)
            started = await start_answer(ws, "Which salt suits sourdough?", op_id="stop")
            for _ in range(2):
                assert (await next_frame(ws, started, op_id="stop")).type == "next"
            await ws.send(json.dumps({"id": "stop", "type": "complete"}))
    tokens = sum(e["__typename"] == "AnswerToken" for e in got)
    assert tokens > 1
    assert tracing.force_flush()
    spans = exporter.get_finished_spans()
    # Each operation's span made current and left in its own task, even when stopped.
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]

    operation, stopped = sorted(
        (s for s in spans if s.name == "subscription Answer"), key=lambda s: s.start_time or 0
    )
    found = Trace(spans, _context(operation)[0])
    connection = found.parent(operation)
    assert found.parent(stopped) is connection
    assert stopped.attributes is not None and stopped.attributes["rag_gql.outcome"] == "stopped"
    assert connection is not None and connection.kind is SpanKind.SERVER
    assert connection.name == "WebSocket /graphql"
    own_id = _attribute(operation, "rag_gql.request_id")
    assert own_id and own_id != _attribute(connection, "rag_gql.request_id")
    assert operation.attributes is not None
    assert operation.attributes["rag_gql.outcome"] == "ok"
    for answer in (operation, stopped):
        chats = [s for s in found.ollama("/api/chat") if found.inside(s, answer)]
        embeds = [s for s in found.ollama("/api/embed") if found.inside(s, answer)]
        assert len(chats) == len(embeds) == 1, answer.attributes
    answer_spans = [s for s in found.spans if found.inside(s, operation)]
    assert any(s in answer_spans for s in found.sql())
    for s in found.sql():  # an operation's, or authenticating the socket's `connection_init`
        in_one = found.inside(s, operation) or found.inside(s, stopped)
        assert in_one or found.parent(s) is connection, s.name
    # No span per streamed token: neither per event resolved nor per WebSocket message (the
    # answer's statements, its batches stored as it streams included, are counted apart).
    statements = set(found.sql())
    others = [s for s in answer_spans if s not in statements]
    assert len(others) < tokens, sorted(s.name for s in others)

    _assert_only_requests(spans)  # the ingestion worker's statements and embeddings
    _assert_no_secrets(spans, PASSWORD, token, "sourdough")


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "rag"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, ()),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
        ),
    ],
)
def test_the_variables_that_turn_tracing_on(
    environ: dict[str, str], exporters: tuple[str, ...]
) -> None:
    assert requested_exporters(environ) == exporters


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin is not available here"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTLP protocol 'grpc' is not available",
        ),
    ],
)
def test_variables_that_cannot_work_fail_at_start(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TracingSetupError, match=message):
        setup_tracing(environ)


def test_asked_for_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if OpenTelemetry were not installed: importing the module that needs it fails.
    monkeypatch.setitem(sys.modules, "rag_gql.observability.otel", None)
    monkeypatch.delattr(rag_gql.observability, "otel", raising=False)
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    with pytest.raises(TracingSetupError, match=r"pip install 'rag-gql\[otel\]'"):
        setup_tracing(environ)


def test_off_imports_nothing_of_opentelemetry() -> None:
    """The app built and its schema run with tracing off, in a fresh interpreter."""
    script = (
        "import sys, asyncio\n"
        "from rag_gql.app import create_app\n"
        "from rag_gql.config import Settings\n"
        "from rag_gql.graphql.schema import schema\n"
        "from rag_gql.observability.tracing import setup_tracing\n"
        "assert setup_tracing() is None\n"
        "create_app(Settings(_env_file=None, database_url='postgresql://u@127.0.0.1/db'))\n"
        "assert asyncio.run(schema.execute('{ __typename }')).data\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'opentelemetry']\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
