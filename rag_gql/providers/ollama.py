"""Ollama HTTP client: embeddings (`POST /api/embed`) and streamed chat (`POST /api/chat`).

Wire format: https://github.com/ollama/ollama/blob/main/docs/api.md — `/api/chat` with
`stream: true` answers NDJSON, one JSON object per line, the last with `done: true` and the
token counters. The client is an injected `httpx.AsyncClient` (built once in the app's
lifespan), so connections are pooled and tests can aim it at a loopback stand-in.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from rag_gql.errors import UpstreamError, UpstreamUnavailable


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

    Every method raises `UpstreamUnavailable` when Ollama cannot be reached, times out or
    drops the connection, and `UpstreamError` (with Ollama's own message) when it answers
    with an error.
    """

    def __init__(
        self, http: httpx.AsyncClient, *, embed_model: str, chat_model: str, batch_size: int = 64
    ) -> None:
        self._http = http
        self.embed_model = embed_model
        self.chat_model = chat_model
        self.batch_size = batch_size

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds `texts` in batches of `batch_size`; returns one vector per text, in order."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            body = await self._post_json(
                "/api/embed", {"model": self.embed_model, "input": batch, "truncate": True}
            )
            got = body.get("embeddings")
            if not isinstance(got, list) or len(got) != len(batch):
                raise UpstreamError("Ollama returned a malformed /api/embed response")
            vectors.extend(got)
        return vectors

    async def chat_stream(
        self, messages: Sequence[ChatMessage], *, options: dict[str, Any] | None = None
    ) -> AsyncIterator[ChatDelta]:
        """Streams the reply to `messages`, one `ChatDelta` per NDJSON line, as it arrives.

        The last delta has `done=True` and the token counts. A stream that ends without it
        raises `UpstreamUnavailable`.
        """
        payload: dict[str, Any] = {
            "model": self.chat_model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
        }
        if options:
            payload["options"] = options
        try:
            async with self._http.stream("POST", "/api/chat", json=payload) as response:
                if response.is_error:
                    await response.aread()
                    raise UpstreamError(_error_message(response))
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    delta = _parse_chat_line(line)
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
        """Returns the names of the models Ollama has (`GET /api/tags`)."""
        try:
            response = await self._http.get("/api/tags")
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"Ollama is unreachable: {_describe(exc)}") from exc
        if response.is_error:
            raise UpstreamError(_error_message(response))
        models = response.json().get("models", [])
        return [str(m.get("name", "")) for m in models if isinstance(m, dict)]

    async def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
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
