"""Grounded answers: retrieve, then stream the chat model's reply token by token.

The events, in order: one `Sources`, a `Token` per streamed piece, then `Done` — or an
`Failed` event in place of the rest when something breaks mid-way (a subscription yields its
errors rather than raising them). Retrieval's transaction is closed before streaming starts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from string import Template

from rag_gql.errors import DomainError
from rag_gql.providers.ollama import ChatMessage, OllamaClient
from rag_gql.repositories.chunks import ChunkScope
from rag_gql.services.access import Principal
from rag_gql.services.retrieval import RetrievalService, SearchHit, SearchMode


@dataclass(frozen=True, slots=True)
class Sources:
    """The passages the answer is grounded in, numbered from 1 in this order."""

    hits: list[SearchHit]


@dataclass(frozen=True, slots=True)
class Token:
    """One piece of the answer, as the model streamed it."""

    text: str


@dataclass(frozen=True, slots=True)
class Done:
    """The end: token counts from Ollama; times in milliseconds from the question."""

    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The answer stopped: `code` is a GraphQL error code, `message` says why."""

    code: str
    message: str


AnswerEvent = Sources | Token | Done | Failed


def _template(name: str) -> Template:
    text = resources.files("rag_gql.services").joinpath("prompts", name).read_text("utf-8")
    return Template(text)


def build_prompt(question: str, hits: Sequence[SearchHit]) -> list[ChatMessage]:
    """Returns the chat messages: a system prompt with numbered sources, then the question."""
    blocks = [
        f"[{n}] {hit.document.filename}, page {hit.page}:\n{hit.text}"
        for n, hit in enumerate(hits, start=1)
    ]
    sources = "\n\n".join(blocks) if blocks else "(no sources were found)"
    system = _template("answer_system.txt").substitute(sources=sources)
    user = _template("answer_user.txt").substitute(question=question)
    return [ChatMessage("system", system), ChatMessage("user", user.strip())]


class GenerationService:
    """Answers questions from the caller's documents."""

    def __init__(self, *, retrieval: RetrievalService, ollama: OllamaClient) -> None:
        self._retrieval = retrieval
        self._ollama = ollama

    async def answer(
        self,
        principal: Principal,
        question: str,
        k: int,
        *,
        mode: SearchMode = SearchMode.HYBRID,
        scope: ChunkScope | None = None,
    ) -> AsyncIterator[AnswerEvent]:
        """Yields `Sources`, then `Token`s as they arrive (never buffered), then `Done`.

        Input errors (empty question, bad `k`) raise `InvalidInput` before the first event;
        failures after it end the stream with a `Failed` event.
        """
        started = time.perf_counter()
        hits = await self._retrieval.search(principal, question, k, mode=mode, scope=scope)
        yield Sources(hits)
        first_token_at: float | None = None
        try:
            async for delta in self._ollama.chat_stream(build_prompt(question.strip(), hits)):
                if delta.text:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    yield Token(delta.text)
                if delta.done:
                    now = time.perf_counter()
                    yield Done(
                        prompt_tokens=delta.prompt_tokens,
                        completion_tokens=delta.completion_tokens,
                        time_to_first_token_ms=((first_token_at or now) - started) * 1000,
                        total_ms=(now - started) * 1000,
                    )
                    return
        except DomainError as exc:
            yield Failed(code=exc.code, message=str(exc))
