"""Prometheus metrics (`prometheus-client`), in a registry of the process's own.

One `Metrics` per process, held by `Services` (no module-level collectors): `/metrics`
renders its registry. Names, labels and units:

- `rag_gql_graphql_requests_total{type, operation, outcome}`: operations; `type` is
  query, mutation or subscription; `operation` the root field (`multiple` for several,
  `introspection`, or `unknown` when the document did not parse or validate); `outcome` is
  `ok` or the first error's `extensions.code` (a fixed set, so the labels stay few).
- `rag_gql_graphql_request_duration_seconds{type, operation}`: histogram; a subscription's
  whole stream.
- `rag_gql_live_subscriptions{operation}`: subscriptions being streamed now.
- `rag_gql_answer_tokens_streamed_total`: answer tokens sent to clients.
- `rag_gql_answer_time_to_first_token_seconds`: histogram, from the question to the first
  token of the answer.
- `rag_gql_ollama_errors_total{endpoint, kind}`: failed Ollama HTTP calls; `kind` is
  `timeout`, `connection` or `http_<status>`.
- `rag_gql_reranks_total{outcome}`: searches that asked the reranker; `outcome` is `ok`,
  or why the hits came back in fused order: `unavailable` (unreachable, timed out, 5xx),
  `circuit_open`, `error` (a 4xx or a malformed answer).
- `rag_gql_ingest_queue_depth`: ingestion jobs waiting or running (set when scraped).
- `rag_gql_ingest_stage_seconds_total{stage}`: ingestion time per stage (extract, embed,
  write); `rag_gql_ingest_jobs_total{outcome}`, `rag_gql_ingested_pages_total`,
  `rag_gql_ingested_chunks_total`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""Seconds; answers stream for tens of seconds on a CPU."""
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
OLLAMA_ENDPOINTS = frozenset({"/api/embed", "/api/chat", "/api/tags"})


class Metrics:
    """The process's collectors and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rag_gql_graphql_requests",
            "GraphQL operations by type, root field and outcome (ok or the error code).",
            ["type", "operation", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "rag_gql_graphql_request_duration_seconds",
            "Time to serve a GraphQL operation (a subscription: its whole stream).",
            ["type", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.live_subscriptions = Gauge(
            "rag_gql_live_subscriptions",
            "Subscriptions being streamed now.",
            ["operation"],
            registry=r,
        )
        self.tokens_streamed = Counter(
            "rag_gql_answer_tokens_streamed", "Answer tokens sent to clients.", registry=r
        )
        self.time_to_first_token = Histogram(
            "rag_gql_answer_time_to_first_token_seconds",
            "From the question to the answer's first token.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.ollama_errors = Counter(
            "rag_gql_ollama_errors",
            "Failed Ollama HTTP calls by endpoint and kind (timeout, connection, http_<status>).",
            ["endpoint", "kind"],
            registry=r,
        )
        self.reranks = Counter(
            "rag_gql_reranks",
            "Searches that asked the reranker, by outcome (ok; unavailable, circuit_open or "
            "error: hits in fused order).",
            ["outcome"],
            registry=r,
        )
        self.ingest_queue_depth = Gauge(
            "rag_gql_ingest_queue_depth", "Ingestion jobs waiting or running.", registry=r
        )
        self.ingest_stage_seconds = Counter(
            "rag_gql_ingest_stage_seconds",
            "Time ingestion jobs spent per stage: extract (waiting for text from the "
            "extraction processes), embed (Ollama), write (COPY and index upkeep).",
            ["stage"],
            registry=r,
        )
        self.ingest_jobs = Counter(
            "rag_gql_ingest_jobs",
            "Ingestion runs by outcome (ready, failed, retry, requeued).",
            ["outcome"],
            registry=r,
        )
        self.ingested_pages = Counter(
            "rag_gql_ingested_pages", "Pages (sections, row blocks) made searchable.", registry=r
        )
        self.ingested_chunks = Counter(
            "rag_gql_ingested_chunks", "Chunks made searchable.", registry=r
        )

    def observe_operation(self, *, type: str, operation: str, outcome: str, seconds: float) -> None:
        """Counts one GraphQL operation and its duration."""
        self.requests.labels(type=type, operation=operation, outcome=outcome).inc()
        self.latency.labels(type=type, operation=operation).observe(seconds)

    @contextmanager
    def live_subscription(self, operation: str) -> Iterator[None]:
        """Counts a subscription as live for the duration of the block."""
        gauge = self.live_subscriptions.labels(operation=operation)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def answer_token_streamed(self) -> None:
        """Counts one answer token sent to a client."""
        self.tokens_streamed.inc()

    def answer_first_token(self, seconds: float) -> None:
        """Records the time from a question to its answer's first token, in seconds."""
        self.time_to_first_token.observe(seconds)

    def ollama_error(self, path: str, kind: str) -> None:
        """Counts a failed Ollama call to `path` (other paths count as `other`)."""
        endpoint = path if path in OLLAMA_ENDPOINTS else "other"
        self.ollama_errors.labels(endpoint=endpoint, kind=kind).inc()

    def rerank(self, outcome: str) -> None:
        """Counts one search's rerank call by `outcome` (ok, unavailable, circuit_open, error)."""
        self.reranks.labels(outcome=outcome).inc()

    @contextmanager
    def ingest_stage(self, stage: str) -> Iterator[None]:
        """Adds the block's wall time to the ingestion stage `stage`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ingest_stage_seconds.labels(stage=stage).inc(time.perf_counter() - started)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
