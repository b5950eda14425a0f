"""Reranking client: a cross-encoder re-scores (query, passage) pairs over HTTP.

Wire formats:

- `v1` — the rerank API llama.cpp's server, vLLM, Infinity, Jina and Cohere serve:
  `POST /v1/rerank` `{"model", "query", "documents": [...], "top_n"}` →
  `{"results": [{"index", "relevance_score"}, ...]}`.
- `tei` — Hugging Face Text Embeddings Inference: `POST /rerank` `{"query", "texts": [...],
  "truncate": true}` → `[{"index", "score"}, ...]` (every text scored; `top_n` is applied
  here).

Resilience as for Ollama (`providers.breaker`): every call passes a circuit breaker of its
own, and a call that could not reach the reranker, timed out (`timeout` seconds for the whole
request) or got a 5xx is tried `attempts` times (`stamina`: exponential backoff with jitter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import stamina

from rag_gql.errors import UpstreamError, UpstreamUnavailable
from rag_gql.providers.breaker import Breaker, retryable

CIRCUIT = "rerank"

RerankApi = Literal["v1", "tei"]


@dataclass(frozen=True, slots=True)
class Ranked:
    """One re-scored document: its index in the request's `documents`, and its score (the
    model's relevance; higher is better, on the model's own scale)."""

    index: int
    score: float


class RerankClient:
    """Talks to one reranking server.

    Args:
        http: a client whose `base_url` is the server (`RERANK_URL`).
        model: the model named in `v1` requests (`RERANK_MODEL`; None: none named). TEI
            serves one model and is sent none.
        api: the wire format (`RERANK_API`).
        timeout: seconds a request may take in all (`RERANK_TIMEOUT`).
        attempts: tries of a request that could not reach the server or got a 5xx.
        breaker_threshold: failures in a row that open the circuit.
        breaker_reset: seconds the circuit stays open.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        model: str | None,
        api: RerankApi = "v1",
        timeout: float = 5.0,
        attempts: int = 1,
        breaker_threshold: int = 5,
        breaker_reset: float = 30.0,
    ) -> None:
        self._http = http
        self.model = model
        self.api = api
        self._timeout = timeout
        self._attempts = attempts
        self._breaker = Breaker(
            CIRCUIT,
            threshold=breaker_threshold,
            reset=breaker_reset,
            refusal="The reranker is unavailable (it failed repeatedly; skipped for a while)",
        )

    async def rerank(self, query: str, documents: Sequence[str], *, top_n: int) -> list[Ranked]:
        """The best `top_n` of `documents` for `query`, best first (fewer when fewer were
        sent); nothing is sent for no documents.

        Raises:
            UpstreamUnavailable: the reranker could not be reached, timed out or answered 5xx
                in `attempts` tries (`CircuitOpen`, a subclass, while the circuit is open).
            UpstreamError: a 4xx, or a body that is not the format's (an index out of range,
                a score that is not a number).
        """
        if not documents:
            return []
        if self.api == "tei":
            path = "/rerank"
            # TEI refuses inputs past the model's length unless told to truncate them.
            payload: dict[str, Any] = {"query": query, "texts": list(documents), "truncate": True}
        else:
            path = "/v1/rerank"
            payload = {"query": query, "documents": list(documents), "top_n": top_n}
            if self.model:
                payload["model"] = self.model
        body = await self._post_retried(path, payload)
        entries = body if self.api == "tei" else _results(body)
        ranked = _parse(entries, len(documents))
        ranked.sort(key=lambda r: -r.score)
        return ranked[:top_n]

    async def _post_retried(self, path: str, payload: dict[str, Any]) -> Any:
        async for attempt in stamina.retry_context(
            on=retryable,
            attempts=self._attempts,
            timeout=None,
            wait_initial=0.05,
            wait_max=0.5,
            wait_jitter=0.1,
        ):
            with attempt:
                return await self._post(path, payload)
        raise AssertionError("unreachable: stamina re-raises the last failure")

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        async with self._breaker.guarded():
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._http.post(path, json=payload)
            except TimeoutError as exc:
                raise UpstreamUnavailable(
                    f"The reranker did not answer within {self._timeout} s"
                ) from exc
            except httpx.TransportError as exc:
                detail = str(exc) or type(exc).__name__
                raise UpstreamUnavailable(f"The reranker is unreachable: {detail}") from exc
            if response.status_code >= 500:
                raise UpstreamUnavailable(f"The reranker failed ({response.status_code})")
        if response.is_error:
            raise UpstreamError(f"Reranker error ({response.status_code}): {response.text[:200]}")
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(f"The reranker returned invalid JSON from {path}") from exc


def _results(body: Any) -> Any:
    if not isinstance(body, dict):
        raise UpstreamError("The reranker returned a malformed /v1/rerank response")
    return body.get("results")


def _parse(entries: Any, count: int) -> list[Ranked]:
    """`[{"index", "relevance_score" | "score"}]` → `Ranked`, each index in 0..count-1 once."""
    if not isinstance(entries, list):
        raise UpstreamError("The reranker returned a malformed response")
    ranked: list[Ranked] = []
    seen: set[int] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise UpstreamError("The reranker returned a malformed result")
        index = entry.get("index")
        score = entry.get("relevance_score", entry.get("score"))
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < count
            or index in seen
            or not isinstance(score, int | float)
            or isinstance(score, bool)
            or score != score  # NaN
        ):
            raise UpstreamError("The reranker returned a malformed result")
        seen.add(index)
        ranked.append(Ranked(index=index, score=float(score)))
    return ranked
