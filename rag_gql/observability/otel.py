"""OpenTelemetry tracing of the API server (needs the `otel` extra; imported only by
`rag_gql.observability.tracing.setup_tracing` when tracing is on).

One trace per HTTP request, and per WebSocket connection:

- the request: a SERVER span per HTTP request or WebSocket connection (OpenTelemetry's ASGI
  middleware), with `rag_gql.request_id` (the `X-Request-Id` of the logs). Not traced:
  `/healthz` (probed every few seconds), the operations listener (`/readyz`, `/metrics`:
  `rag_gql.operations` has no tracing middleware), nor the ASGI messages (`receive`/`send`
  spans would be one per streamed token);
- each GraphQL operation (`rag_gql.graphql.tracing.GraphQLTracing`, Strawberry's
  `OpenTelemetryExtension`): named
  `<type> <operation name or root field>`, with its `rag_gql.request_id` (a WebSocket
  operation has one of its own) and `rag_gql.outcome` (`ok` or the first error's code, as
  in the metrics; `stopped` for a subscription the client completed or left); parsing and
  validation spans; a span per root field of a query or mutation;
- each SQL statement (OpenTelemetry's SQLAlchemy instrumentation, and asyncpg's query
  logger for the statements run on the driver (`Database.driver_transaction`): the
  statement with its placeholders, never the values) and each Ollama call (its HTTPX
  instrumentation; for a streamed chat the span ends when the response starts).

Neither the GraphQL document nor argument values are recorded: they hold passwords, tokens,
reset codes and the users' questions. Spans that belong to no request are dropped
(`RequestsOnly`): the in-process ingestion worker's statements and embeddings, the start-up
checks, the probes' queries. Traces are sampled by `OTEL_TRACES_SAMPLER` (default: all).

No global tracer provider is set and no library is patched: the provider is passed to each
instrumentation explicitly, so several apps in one process (tests) each trace to their own.
A caller's W3C `traceparent` is continued, and passed on to Ollama, by OpenTelemetry's
default propagators (`OTEL_PROPAGATORS`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import httpx
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, get_default_span_details
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.instrumentation.sqlalchemy.version import __version__ as SQLALCHEMY_VERSION
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.http import parse_excluded_urls
from opentelemetry.util.types import Attributes
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware import Middleware
from starlette.types import Scope

from rag_gql.observability.requests import current_request_id

SERVICE = "rag-gql"
"""`service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name it."""
REQUEST_ID = "rag_gql.request_id"
OUTCOME = "rag_gql.outcome"
UNTRACED_PATHS = "/healthz$"
"""Regular expressions (OpenTelemetry's excluded-URL syntax) of the public paths not traced."""
SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
"""The instrumentation scope SQLAlchemy's instrumentor gives its spans."""
DRIVER_SCOPE = "rag_gql.db.driver"
"""The instrumentation scope of the statements run on asyncpg directly."""


class Tracing:
    """The process's tracer provider and the instrumentations built on it.

    `create_app` adds `asgi_middleware()` and `rag_gql.graphql.tracing.tracing_extension(self)`;
    `open_services` wraps
    the Ollama client's transport with `http_transport()` and calls `instrument_engine()`.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        # The instrumentations also record metrics; Prometheus has ours (rag_gql.observability
        # .metrics), so theirs go nowhere, and not to OpenTelemetry's global meter provider.
        self._meters = NoOpMeterProvider()

    def asgi_middleware(self) -> Middleware:
        """Starlette middleware: a SERVER span per HTTP request and WebSocket connection.

        Goes inside `RequestIdMiddleware` (after it in Starlette's list), so that the request
        id is bound when the span starts.
        """
        return Middleware(
            OpenTelemetryMiddleware,
            excluded_urls=parse_excluded_urls(UNTRACED_PATHS),
            default_span_details=_span_details,
            server_request_hook=_tag_request,
            tracer_provider=self.provider,
            meter_provider=self._meters,
            exclude_spans=["receive", "send"],
        )

    def http_transport(self, inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        """`inner`, with a CLIENT span per request (HTTPX's instrumentation, on this client
        only)."""
        return AsyncOpenTelemetryTransport(
            inner, tracer_provider=self.provider, meter_provider=self._meters
        )

    def instrument_engine(self, engine: AsyncEngine) -> None:
        """A CLIENT span per statement `engine` executes (until the engine is dropped), and
        per statement run on its pooled asyncpg connections directly (`_driver_span`).

        Uses `EngineTracer`, what `SQLAlchemyInstrumentor().instrument(engine=...)` builds
        and returns, directly: `instrument()` would also patch `create_engine` and
        `Engine.connect` process-wide, can run once per process only, and refuses
        SQLAlchemy 2.1 (its declared range ends at 2.0) unless told to skip that check.
        """
        tracer = trace.get_tracer(SQLALCHEMY_SCOPE, SQLALCHEMY_VERSION, self.provider)
        meter = self._meters.get_meter(SQLALCHEMY_SCOPE, SQLALCHEMY_VERSION)
        connections = meter.create_up_down_counter("db.client.connections.usage")
        EngineTracer(tracer, engine.sync_engine, connections)  # type: ignore[no-untyped-call]
        driver = trace.get_tracer(DRIVER_SCOPE, tracer_provider=self.provider)

        @event.listens_for(engine.sync_engine, "connect")
        def _log_queries(dbapi_connection: Any, _record: object) -> None:
            dbapi_connection.driver_connection.add_query_logger(partial(_driver_span, driver))

    def force_flush(self) -> bool:
        """Exports the spans ended so far; True unless it timed out (30 s)."""
        return self.provider.force_flush()

    def shutdown(self) -> None:
        """Exports what is left and stops the exporters; call once, when serving is over."""
        self.provider.shutdown()


def build_tracing(exporters: Iterable[SpanExporter]) -> Tracing:
    """A `Tracing` whose spans go to `exporters`, each behind a `BatchSpanProcessor`
    (`OTEL_BSP_*` tune it), sampled by `RequestsOnly` over `OTEL_TRACES_SAMPLER`."""
    resource = _resource()
    # `TracerProvider` reads OTEL_TRACES_SAMPLER when given no sampler; this one is built for
    # that only, so that the requests-only rule wraps whatever sampler the variables choose.
    configured = TracerProvider(resource=resource, shutdown_on_exit=False).sampler
    provider = TracerProvider(
        resource=resource, sampler=RequestsOnly(configured), shutdown_on_exit=False
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


def make_exporter(name: str) -> SpanExporter:
    """The exporter called `name` in `OTEL_TRACES_EXPORTER` (`otlp` or `console`), configured
    by the `OTEL_EXPORTER_OTLP_*` variables.

    Raises:
        ValueError: another name (`requested_exporters` lets none through).
    """
    if name == "otlp":
        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"no span exporter called {name!r}")


class RequestsOnly(Sampler):
    """Samples only traces that start with a request: a span without a parent is dropped
    unless it is a SERVER span (the ASGI middleware's); every other decision is `inner`'s.

    Without it each SQL statement and Ollama call made outside a request (the in-process
    ingestion worker, the start-up checks, the probes and scrapes not traced) would be a trace
    of its own.
    """

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and kind is not SpanKind.SERVER:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestsOnly{{{self._inner.get_description()}}}"


_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"})


def _driver_span(tracer: trace.Tracer, record: Any) -> None:
    """Records one statement asyncpg ran (its query logger's `LoggedQuery`) as a CLIENT span
    that ends now and lasted `record.elapsed`, with the statement's text (placeholders, no
    values); not asyncpg's own BEGIN / COMMIT / ROLLBACK. asyncpg calls this with
    `loop.call_soon` from the statement's own context, so the span's parent is the span that
    ran the statement."""
    query = str(record.query)
    verb = query.split(None, 1)[0].rstrip(";").upper() if query.strip() else "SQL"
    if verb in _TRANSACTION_CONTROL:  # as SQLAlchemy's instrumentation: statements only
        return
    end = time.time_ns()
    span = tracer.start_span(
        verb,
        kind=SpanKind.CLIENT,
        start_time=end - int(record.elapsed * 1e9),
        attributes={"db.system": "postgresql", "db.statement": query},
    )
    if record.exception is not None:
        span.set_status(Status(StatusCode.ERROR, type(record.exception).__name__))
    span.end(end_time=end)


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """`GET /path`, and `WebSocket /path` (ASGI's own says `HTTP /path`)."""
    if scope["type"] == "websocket":
        return f"WebSocket {scope['path']}", {}
    name, attributes = get_default_span_details(cast("dict[str, Any]", scope))
    return name, attributes


def _tag_request(span: Span, scope: Scope) -> None:
    request_id = current_request_id()
    if request_id is not None:
        span.set_attribute(REQUEST_ID, request_id)


def _resource() -> Resource:
    """OpenTelemetry's resource from the environment, with `service.name` defaulting to
    `rag-gql` (not `unknown_service`) and this package's `service.version`."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    if SERVICE_VERSION not in resource.attributes:
        with suppress(PackageNotFoundError):  # run from a source tree without installing
            resource = resource.merge(Resource({SERVICE_VERSION: version("rag-gql")}))
    return resource
