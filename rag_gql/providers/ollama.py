"""Ollama HTTP client: embeddings (`POST /api/embed`) and streamed chat (`POST /api/chat`).

Wire format: https://github.com/ollama/ollama/blob/main/docs/api.md — `/api/chat` with
`stream: true` answers NDJSON, one JSON object per line, the last with `done: true` and the
token counters. The client is an injected `httpx.AsyncClient` (built once in the app's
lifespan, with its connect and read timeouts), so connections are pooled and tests can aim it
at a loopback stand-in.

Resilience: every call passes one circuit breaker (`providers.breaker.Breaker`): after
`breaker_threshold` calls in a row that could not reach Ollama (refused, timed out, dropped),
calls fail at once with `CircuitOpen` for `breaker_reset` seconds; then calls are let through
again, and the first to fail opens the circuit anew, the first to succeed closes it. HTTP
errors from Ollama (a missing model, a bad request) do not count: Ollama answered. Embedding
requests, being idempotent, are tried `embed_attempts` times (`stamina`: exponential backoff
with jitter) when Ollama could not be reached; chat is not retried.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import stamina

from rag_gql.errors import UpstreamError, UpstreamUnavailable
from rag_gql.providers.breaker import Breaker, CircuitOpen, retryable

__all__ = ["ChatDelta", "ChatMessage", "CircuitOpen", "EmbeddingSizeMismatch", "OllamaClient"]

CIRCUIT = "ollama"
PING_TIMEOUT = 2.5
"""Seconds `ping` (`/readyz`) waits for Ollama, below the readiness check's own 3 s."""


class EmbeddingSizeMismatch(UpstreamError):
    """Ollama returned vectors of `got` dimensions where `expected` (`EMBED_DIM`) are stored."""

    def __init__(self, *, got: int, expected: int) -> None:
        super().__init__(
            f"Ollama returned {got}-dimensional embeddings, but EMBED_DIM is {expected}: "
            "the embedding model was changed"
        )
        self.got = got
        self.expected = expected


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat prompt; `role` is `system`, `user` or `assistant`."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """A piece of a streamed reply: `text` (may be empty); on the last, `done` and counters."""

    text: str
    done: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


class OllamaClient:
    """Talks to one Ollama server.

    Args:
        http: a client whose `base_url` is the Ollama server (`OLLAMA_URL`).
        embed_model: model for `/api/embed` (`OLLAMA_EMBED_MODEL`).
        chat_model: model for `/api/chat` (`OLLAMA_CHAT_MODEL`).
        batch_size: texts per `/api/embed` request.
        embed_dim: the length every embedding must have (`EMBED_DIM`); None checks nothing.
        embed_attempts: tries of an embedding request that cannot reach Ollama.
        breaker_threshold: failures in a row that open the circuit.
        breaker_reset: seconds the circuit stays open.

    Every method raises `UpstreamUnavailable` when Ollama cannot be reached, times out or
    drops the connection (`CircuitOpen`, a subclass, while the circuit is open), and
    `UpstreamError` (with Ollama's own message) when it answers with an error or garbage.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        embed_model: str,
        chat_model: str,
        batch_size: int = 64,
        embed_dim: int | None = None,
        embed_attempts: int = 1,
        breaker_threshold: int = 5,
        breaker_reset: float = 30.0,
    ) -> None:
        self._http = http
        self.embed_model = embed_model
        self.chat_model = chat_model
        self.batch_size = batch_size
        self.embed_dim = embed_dim
        self._embed_attempts = embed_attempts
        self._breaker = Breaker(
            CIRCUIT,
            threshold=breaker_threshold,
            reset=breaker_reset,
            refusal="Ollama is unavailable (it failed repeatedly; calls are refused for a while)",
        )

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds `texts` in batches of `batch_size`; returns one vector per text, in order.

        Raises:
            EmbeddingSizeMismatch: a vector's length is not `embed_dim`.
            UpstreamUnavailable: Ollama could not be reached in `embed_attempts` tries.
            UpstreamError: Ollama answered with an error or a malformed body.
        """
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            body = await self._embed_batch(batch)
            got = body.get("embeddings")
            if not isinstance(got, list) or len(got) != len(batch):
                raise UpstreamError("Ollama returned a malformed /api/embed response")
            if self.embed_dim is not None:
                for vector in got:
                    if not isinstance(vector, list) or len(vector) != self.embed_dim:
                        size = len(vector) if isinstance(vector, list) else 0
                        raise EmbeddingSizeMismatch(got=size, expected=self.embed_dim)
            vectors.extend(got)
        return vectors

    async def _embed_batch(self, batch: list[str]) -> dict[str, Any]:
        payload = {"model": self.embed_model, "input": batch, "truncate": True}
        async for attempt in stamina.retry_context(
            on=retryable,
            attempts=self._embed_attempts,
            timeout=None,
            wait_initial=0.2,
            wait_max=2.0,
            wait_jitter=0.5,
        ):
            with attempt:
                return await self._post_json("/api/embed", payload)
        raise AssertionError("unreachable: stamina re-raises the last failure")

    async def chat_stream(
        self, messages: Sequence[ChatMessage], *, options: dict[str, Any] | None = None
    ) -> AsyncIterator[ChatDelta]:
        """Streams the reply to `messages` as it arrives: one `ChatDelta` per read from the
        connection, holding the text of every NDJSON line that read completed (one line,
        unless this process fell behind: then the lines waiting are sent on together, which
        costs no latency and spares a GraphQL event per token).

        The last delta has `done=True` and the token counts.

        Raises:
            UpstreamUnavailable: Ollama could not be reached, went silent for longer than the
                read timeout (a slow first token included), or ended the stream without `done`.
            UpstreamError: an HTTP error, an `{"error": ...}` line, or a line that is not JSON.
        """
        payload: dict[str, Any] = {
            "model": self.chat_model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
        }
        if options:
            payload["options"] = options
        async with self._guarded():
            try:
                async with self._http.stream("POST", "/api/chat", json=payload) as response:
                    if response.is_error:
                        await response.aread()
                        raise UpstreamError(_error_message(response))
                    async for delta in _coalesced(response.aiter_text()):
                        yield delta
                        if delta.done:
                            return
            except httpx.TransportError as exc:
                raise UpstreamUnavailable(f"Ollama connection failed: {_describe(exc)}") from exc
            raise UpstreamUnavailable("Ollama ended the answer stream before it was done")

    async def chat(
        self, messages: Sequence[ChatMessage], *, options: dict[str, Any] | None = None
    ) -> ChatDelta:
        """Returns the whole reply at once (`stream: false`), with its token counts."""
        payload: dict[str, Any] = {
            "model": self.chat_model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": False,
        }
        if options:
            payload["options"] = options
        body = await self._post_json("/api/chat", payload)
        message = body.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise UpstreamError("Ollama returned a malformed /api/chat response")
        return ChatDelta(
            text=message["content"],
            done=True,
            prompt_tokens=int(body.get("prompt_eval_count") or 0),
            completion_tokens=int(body.get("eval_count") or 0),
        )

    async def ping(self) -> list[str]:
        """Returns the names of the models Ollama has (`GET /api/tags`), waiting at most
        `PING_TIMEOUT` seconds. Passes the circuit breaker: while it is open this raises
        `CircuitOpen`, and once it may close, a successful ping closes it."""
        async with self._guarded():
            try:
                response = await self._http.get("/api/tags", timeout=PING_TIMEOUT)
            except httpx.TransportError as exc:
                raise UpstreamUnavailable(f"Ollama is unreachable: {_describe(exc)}") from exc
        if response.is_error:
            raise UpstreamError(_error_message(response))
        try:
            models = response.json().get("models", [])
        except (ValueError, AttributeError) as exc:
            raise UpstreamError("Ollama returned a malformed /api/tags response") from exc
        return [str(m.get("name", "")) for m in models if isinstance(m, dict)]

    def _guarded(self) -> AbstractAsyncContextManager[None]:
        """Runs the block through the circuit breaker (see the module's docstring).

        Raises:
            CircuitOpen: the circuit is open; the block does not run.
        """
        return self._breaker.guarded()

    async def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        async with self._guarded():
            try:
                response = await self._http.post(path, json=payload)
            except httpx.TransportError as exc:
                raise UpstreamUnavailable(f"Ollama is unreachable: {_describe(exc)}") from exc
        if response.is_error:
            raise UpstreamError(_error_message(response))
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamError(f"Ollama returned invalid JSON from {path}") from exc
        if not isinstance(body, dict):
            raise UpstreamError(f"Ollama returned a malformed {path} response")
        return body


async def _coalesced(chunks: AsyncIterator[str]) -> AsyncIterator[ChatDelta]:
    """NDJSON text chunks → one `ChatDelta` per chunk that completes at least one line:
    their texts joined, `done` and the counters from a final line. Lines after `done` are
    ignored. A bad line raises (see `_parse_chat_line`) after the text before it is yielded.
    """
    pending = ""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split("\n")
        texts: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                delta = _parse_chat_line(line)
            except UpstreamError:
                if texts:
                    yield ChatDelta(text="".join(texts))
                raise
            texts.append(delta.text)
            if delta.done:
                yield replace(delta, text="".join(texts))
                return
        if texts:
            yield ChatDelta(text="".join(texts))
    if pending.strip():  # a last line without its newline
        yield _parse_chat_line(pending)


def _parse_chat_line(line: str) -> ChatDelta:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise UpstreamError("Ollama sent a malformed line in the answer stream") from exc
    if not isinstance(obj, dict):
        raise UpstreamError("Ollama sent a malformed line in the answer stream")
    if "error" in obj:
        raise UpstreamError(f"Ollama error: {obj['error']}")
    message = obj.get("message") or {}
    text = str(message.get("content", "")) if isinstance(message, dict) else ""
    if obj.get("done"):
        return ChatDelta(
            text=text,
            done=True,
            prompt_tokens=int(obj.get("prompt_eval_count") or 0),
            completion_tokens=int(obj.get("eval_count") or 0),
        )
    return ChatDelta(text=text)


def _error_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error")
    except ValueError:
        detail = None
    detail = detail or response.text[:200] or response.reason_phrase
    return f"Ollama error ({response.status_code}): {detail}"


def _describe(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__
