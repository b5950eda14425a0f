"""Grounded answers: (rewrite a follow-up,) retrieve, stream the reply, cite, store.

The events (`services.answers`), in order and numbered from 1: one `Sources`, a `Token` per
streamed piece, then `Done` — or `Failed` in place of the rest when something breaks after
the sources (a subscription yields its errors rather than raising them). No transaction is
held across an Ollama call or a yield.

Every answer belongs to a conversation (a new one unless `conversation_id` is given) and is
stored with its question, sources, citations, timings and token counts: from its sources on
it is a run of its own (`services.answer_runs`), stored while it streams and followed from
any process with `answerStream`; a client that leaves does not stop it (unless
ANSWER_CONTINUE_ON_DISCONNECT=false: then it is stored `interrupted`); one that Ollama broke
off is stored `failed`; a question that fails before its sources leaves nothing (not even the
new conversation). A user runs at most `MAX_ANSWER_STREAMS_PER_USER` answers at once, a run
whose client left included; the process runs at most `MAX_ANSWERS_RETRIEVING` of its
answers' database steps at once, the rest waiting in line, so a burst of questions is served
in order rather than refused.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from string import Template

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Message
from rag_gql.errors import DomainError
from rag_gql.providers.ollama import ChatMessage, OllamaClient
from rag_gql.repositories import conversations
from rag_gql.services.access import Action, Principal
from rag_gql.services.answer_runs import AnswerRuns
from rag_gql.services.answers import INTERRUPTED, Sequenced
from rag_gql.services.answers import AnswerEvent as AnswerEvent
from rag_gql.services.answers import Citation as Citation
from rag_gql.services.answers import Done as Done
from rag_gql.services.answers import Failed as Failed
from rag_gql.services.answers import Sources as Sources
from rag_gql.services.answers import Token as Token
from rag_gql.services.answers import citation as _citation
from rag_gql.services.citations import cited_numbers, estimate_tokens
from rag_gql.services.conversations import find_thread
from rag_gql.services.rate_limits import Slots, caller_key
from rag_gql.services.retrieval import (
    MAX_QUERY_LENGTH,
    RetrievalService,
    Search,
    SearchHit,
    SearchRequest,
)
from rag_gql.services.shared_caps import RedisLeases, SharedSlots

TITLE_LENGTH = 80


@dataclass
class AskResult:
    """A whole answer at once (`ask`), built from the same events as the stream."""

    text: str = ""
    sources: Sources | None = None
    done: Done | None = None
    failed: Failed | None = None
    tokens: list[str] = field(default_factory=list)
    failed_seq: int = 0
    """The `seq` of `failed`, when it is set."""


def _template(name: str) -> Template:
    text = resources.files("rag_gql.services").joinpath("prompts", name).read_text("utf-8")
    return Template(text)


def build_prompt(
    question: str,
    hits: Sequence[SearchHit],
    history: Sequence[Message] = (),
    *,
    num_ctx: int = 8192,
    answer_tokens: int = 1024,
    history_tokens: int = 1024,
) -> tuple[list[ChatMessage], list[SearchHit]]:
    """Returns the chat messages and the sources that fit in the model's context.

    The system prompt numbers the sources; the most recent turns of `history` follow, as many
    as fit in `history_tokens`; then the question. Sources are dropped lowest-ranked first
    until the whole prompt plus `answer_tokens` fits in `num_ctx` (estimated tokens).
    """
    turns: list[ChatMessage] = []
    spent = 0
    for message in reversed(history):
        cost = estimate_tokens(message.content)
        if spent + cost > history_tokens:
            break
        turns.insert(0, ChatMessage(message.role, message.content))
        spent += cost
    user = _template("answer_user.txt").substitute(question=question).strip()
    template = _template("answer_system.txt")
    fixed = estimate_tokens(template.template) + estimate_tokens(user) + spent + answer_tokens
    kept: list[SearchHit] = []
    blocks: list[str] = []
    for hit in hits:
        block = f"[{len(kept) + 1}] {hit.document.filename}, page {hit.page}:\n{hit.text}"
        if fixed + sum(estimate_tokens(b) for b in blocks) + estimate_tokens(block) > num_ctx:
            break
        kept.append(hit)
        blocks.append(block)
    sources = "\n\n".join(blocks) if blocks else "(no sources were found)"
    system = template.substitute(sources=sources)
    return [ChatMessage("system", system), *turns, ChatMessage("user", user)], kept


class GenerationService:
    """Answers questions from the caller's documents, in conversations."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        retrieval: RetrievalService,
        ollama: OllamaClient,
        runs: AnswerRuns,
        leases: RedisLeases | None = None,
    ) -> None:
        """`leases`: where the cap on answers at once is shared with the other replicas."""
        self._settings = settings
        self._db = db
        self._retrieval = retrieval
        self._ollama = ollama
        self.runs = runs
        """The answers' runs: they outlive the stream that started them (`answer`)."""
        self.streams = SharedSlots(
            Slots(
                settings.max_answer_streams_per_user,
                what="answers running",
                setting="MAX_ANSWER_STREAMS_PER_USER",
            ),
            name="answers",
            leases=leases,
        )
        """The answers running now, per caller (a graceful shutdown waits for them)."""
        self._retrieving = asyncio.Semaphore(settings.max_answers_retrieving)
        """Admission to the database work before an answer streams: a burst of answers waits
        here in line rather than for the pool, whose wait is bounded (`SERVER_BUSY`)."""

    async def answer(
        self, principal: Principal, request: SearchRequest
    ) -> AsyncGenerator[Sequenced, None]:
        """Yields `Sources`, then `Token`s as they arrive (never buffered), then `Done`, each
        with its `seq` (1, 2, ...), for the question `request.query` (retrieved as `request`
        says, in the conversation `request.conversation_id`, or a new one).

        The answer is a run of its own (`AnswerRuns.start`): when the caller stops reading
        before the end, it goes on to its end and is stored whole, unless
        ANSWER_CONTINUE_ON_DISCONNECT is false (then it stops, stored `interrupted`). It holds
        one of the caller's `MAX_ANSWER_STREAMS_PER_USER` places until it ends.

        Raises (before the first event):
            RateLimited: the caller already has `MAX_ANSWER_STREAMS_PER_USER` answers running.
            InvalidInput: what `RetrievalService.check` raises (empty or over-long question,
                bad `k`).
            NotFound: `conversation_id` is not the caller's conversation.
            UpstreamUnavailable, UpstreamError: the question could not be embedded/rewritten.
        Failures after `Sources` end the stream with a `Failed` event instead.
        """
        key = caller_key(principal)
        await self.streams.acquire(key)
        try:
            events = self._answer(principal, request)
            try:
                sources = await anext(events)
            except BaseException:
                await events.aclose()
                raise
            assert isinstance(sources, Sources)  # `_answer` yields its sources first
            run = await self.runs.start(
                principal, sources, events, on_end=lambda: self.streams.release(key)
            )
        except BaseException:
            self.streams.release(key)
            raise
        ended = False
        window = self._settings.answer_token_window_ms / 1000
        try:
            async for item in run.follow(0, window=window):
                ended = item.terminal
                yield item
        finally:
            if not ended and not self._settings.answer_continue_on_disconnect:
                reason = Failed(INTERRUPTED, "The client left before the answer's end")
                await asyncio.shield(self.runs.stop(run.message_id, reason))

    async def _answer(
        self, principal: Principal, request: SearchRequest
    ) -> AsyncGenerator[AnswerEvent, None]:
        """`answer`, without its limit on answers at once."""
        started = time.perf_counter()
        principal.require(Action.READ)
        search: Search = self._retrieval.check(request, what="question")
        question, conversation_id = search.query, search.conversation_id
        async with self._retrieving:
            conv_id, history = await self._open_conversation(principal, conversation_id, question)
        try:
            if history:
                search = search.rephrased(await self._standalone(question, history))
            standalone = search.query
            async with self._retrieving:
                hits = await self._retrieval.retrieve(principal, search)
        except BaseException:
            if conversation_id is None:
                # Nothing was asked in it: leave no empty conversation behind.
                await asyncio.shield(self._discard_conversation(principal, conv_id))
            raise
        s = self._settings
        prompt, hits = build_prompt(
            question,
            hits,
            history,
            num_ctx=s.num_ctx,
            answer_tokens=s.answer_max_tokens,
            history_tokens=s.history_token_budget,
        )
        message_id = uuid.uuid4()
        yield Sources(hits, conv_id, standalone, message_id, question=question)

        first_token_at: float | None = None
        parts: list[str] = []
        try:
            options = {"num_ctx": s.num_ctx, "num_predict": s.answer_max_tokens}
            async for delta in self._ollama.chat_stream(prompt, options=options):
                if delta.text:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    parts.append(delta.text)
                    yield Token(delta.text)
                if delta.done:
                    now = time.perf_counter()
                    numbers = cited_numbers("".join(parts), len(hits))
                    yield Done(
                        message_id=message_id,
                        citations=[_citation(n, hits[n - 1]) for n in numbers],
                        grounded=bool(numbers) or not hits,
                        prompt_tokens=delta.prompt_tokens,
                        completion_tokens=delta.completion_tokens,
                        time_to_first_token_ms=((first_token_at or now) - started) * 1000,
                        total_ms=(now - started) * 1000,
                    )
                    return
        except DomainError as exc:
            yield Failed(code=exc.code, message=str(exc))

    async def ask(self, principal: Principal, request: SearchRequest) -> AskResult:
        """The same answer as `answer`, collected into one result (for clients that don't
        stream). Raises as `answer` does before its first event."""
        result = AskResult()
        events = self.answer(principal, request)
        async for item in events:
            match item.event:
                case Sources() as sources:
                    result.sources = sources
                case Token(text=text):
                    result.tokens.append(text)
                case Done() as done:
                    result.done = done
                case Failed() as failed:
                    result.failed = failed
                    result.failed_seq = item.seq
        result.text = "".join(result.tokens)
        return result

    async def _open_conversation(
        self, principal: Principal, conversation_id: uuid.UUID | None, question: str
    ) -> tuple[uuid.UUID, list[Message]]:
        ws = principal.workspace_id
        async with self._db.transaction(ws) as session:
            if conversation_id is None:
                conversation = await conversations.add(
                    session,
                    workspace_id=ws,
                    user_id=principal.user_id,
                    api_key_id=principal.api_key_id,
                    title=question[:TITLE_LENGTH],
                )
                return conversation.id, []
            found, history = await find_thread(session, principal, conversation_id)
        return found.id, [m for m in history if m.status == "complete" or m.role == "user"]

    async def _discard_conversation(self, principal: Principal, conversation_id: uuid.UUID) -> None:
        async with self._db.transaction(principal.workspace_id) as session:
            await conversations.delete_conversation(
                session,
                workspace_id=principal.workspace_id,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                conversation_id=conversation_id,
            )

    async def _standalone(self, question: str, history: Sequence[Message]) -> str:
        """Rewrites a follow-up into a stand-alone question with the chat model."""
        lines: list[str] = []
        spent = 0
        for message in reversed(history):
            line = f"{message.role}: {' '.join(message.content.split())}"
            spent += estimate_tokens(line)
            if spent > self._settings.history_token_budget:
                break
            lines.insert(0, line)
        user = _template("rewrite_user.txt").substitute(history="\n".join(lines), question=question)
        system = _template("rewrite_system.txt").template
        reply = await self._ollama.chat(
            [ChatMessage("system", system), ChatMessage("user", user)],
            options={"num_ctx": self._settings.num_ctx},
        )
        rewritten = " ".join(reply.text.split()).strip("\"'")
        return rewritten[:MAX_QUERY_LENGTH] or question
