"""Answers: the `answer` subscription (sources, tokens as they stream, done), `ask` (the
same answer as one response) and `answerStream` (an answer followed by id: the replay and the
rest of it, from any replica)."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated

import strawberry

from rag_gql.errors import DomainError
from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import parse_id
from rag_gql.graphql.resolvers.search import (
    CollectionIds,
    ConversationId,
    Filter,
    K,
    Mode,
    Question,
    Rerank,
    search_request,
)
from rag_gql.observability.metrics import Metrics
from rag_gql.services import generation
from rag_gql.services.answers import Failed, Sources
from rag_gql.services.rate_limits import Operation
from rag_gql.services.retrieval import DEFAULT_K, SearchMode


@strawberry.type
class AnswerSubscription:
    @strawberry.subscription(
        description="Answers from the workspace's documents: sources, tokens as they stream, "
        "done, each event numbered (`seq`). The answer does not depend on this stream: if the "
        "connection drops it goes on to its end and is stored (ANSWER_CONTINUE_ON_DISCONNECT); "
        "resume it with `answerStream(messageId, afterSeq)`. A credential that expires or is "
        "revoked while it streams (checked every SUBSCRIPTION_REAUTH_SECONDS) stops the answer "
        "with an AnswerError (UNAUTHENTICATED, FORBIDDEN)."
    )
    async def answer(
        self,
        info: Info,
        question: Question,
        k: K = DEFAULT_K,
        mode: Mode = SearchMode.HYBRID,
        filter: Filter = None,
        collection_ids: CollectionIds = None,
        conversation_id: ConversationId = None,
        rerank: Rerank = None,
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.ANSWER, principal)
        events = info.context.services.generation.answer(
            principal,
            search_request(
                question, k, mode, filter, collection_ids, conversation_id, rerank=rerank
            ),
        )
        metrics = info.context.services.metrics
        runs = info.context.services.generation.runs
        every = info.context.services.settings.subscription_reauth_seconds
        loop = asyncio.get_running_loop()
        recheck_at = loop.time() + every
        with metrics.live_subscription("answer"):
            async with aclosing(events):
                message_id: uuid.UUID | None = None
                async for item in events:
                    if isinstance(item.event, Sources):  # the first
                        message_id = item.event.message_id
                    if loop.time() >= recheck_at and message_id is not None:
                        try:
                            await info.context.reauthorize(principal)
                            recheck_at = loop.time() + every
                        except DomainError as exc:
                            # The run stops with this error as its end (stored interrupted),
                            # which comes next in `events`.
                            recheck_at = math.inf
                            await runs.stop(message_id, Failed(exc.code, str(exc)))
                    _count(metrics, item.event)
                    yield types.answer_event(item)


@strawberry.type
class AskMutation:
    @strawberry.mutation(
        description="The same answer as the `answer` subscription, as one response "
        "(for scripts, curl, batch jobs). It is stored in the conversation too."
    )
    async def ask(
        self,
        info: Info,
        question: Question,
        k: K = DEFAULT_K,
        mode: Mode = SearchMode.HYBRID,
        filter: Filter = None,
        collection_ids: CollectionIds = None,
        conversation_id: ConversationId = None,
        rerank: Rerank = None,
    ) -> types.AskResult:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.ANSWER, principal)
        result = await info.context.services.generation.ask(
            principal,
            search_request(
                question, k, mode, filter, collection_ids, conversation_id, rerank=rerank
            ),
        )
        return types.ask_result(result)


@strawberry.type
class AnswerStreamSubscription:
    @strawberry.subscription(
        description="One of the caller's answers by id (`AnswerSources.messageId`): its events "
        "after `afterSeq`, replayed from storage, then live until its AnswerDone or "
        "AnswerError — on any replica, while the answer runs or after it ended (a finished "
        "answer replays whole; nothing when `afterSeq` is at or past its end). To resume after "
        "a dropped connection, pass the last `seq` received. Another caller's answer is "
        "NOT_FOUND, as an unknown id. A credential that expires or is revoked while it streams "
        "(checked every SUBSCRIPTION_REAUTH_SECONDS) ends this stream (not the answer) with an "
        "AnswerError (UNAUTHENTICATED, FORBIDDEN)."
    )
    async def answer_stream(
        self,
        info: Info,
        message_id: Annotated[
            strawberry.ID,
            strawberry.argument(description="The answer's id: `AnswerSources.messageId`."),
        ],
        after_seq: Annotated[
            int,
            strawberry.argument(
                description="Send the events after this one (0: from the first); 0 or more."
            ),
        ] = 0,
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        services = info.context.services
        events = services.generation.runs.stream(
            principal, parse_id(message_id, "Answer"), after_seq
        )
        every = services.settings.subscription_reauth_seconds
        loop = asyncio.get_running_loop()
        recheck_at = loop.time() + every
        last = after_seq
        with services.metrics.live_subscription("answerStream"):
            async with aclosing(events):
                async for item in events:
                    if loop.time() >= recheck_at:
                        try:
                            await info.context.reauthorize(principal)
                        except DomainError as exc:
                            yield types.AnswerError(seq=last, code=exc.code, message=str(exc))
                            return
                        recheck_at = loop.time() + every
                    last = item.seq
                    yield types.answer_event(item)


def _count(metrics: Metrics, event: generation.AnswerEvent) -> None:
    """Counts a streamed token; times the first token when the answer is done."""
    match event:
        case generation.Token():
            metrics.answer_token_streamed()
        case generation.Done(time_to_first_token_ms=ms):
            metrics.answer_first_token(ms / 1000)
        case _:
            pass
