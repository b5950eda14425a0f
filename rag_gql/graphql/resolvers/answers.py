"""Answers: the `answer` subscription (sources, tokens as they stream, done) and `ask` (the
same answer as one response)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import strawberry

from rag_gql.errors import DomainError
from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.search import (
    CollectionIds,
    ConversationId,
    Filter,
    K,
    Mode,
    Question,
    search_request,
)
from rag_gql.observability.metrics import Metrics
from rag_gql.services import generation
from rag_gql.services.rate_limits import Operation
from rag_gql.services.retrieval import DEFAULT_K, SearchMode


@strawberry.type
class AnswerSubscription:
    @strawberry.subscription(
        description="Answers from the workspace's documents: sources, tokens as they stream, "
        "done. A credential that expires or is revoked while it streams (checked every "
        "SUBSCRIPTION_REAUTH_SECONDS) ends it with an AnswerError (UNAUTHENTICATED, FORBIDDEN)."
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
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.ANSWER, principal)
        events = info.context.services.generation.answer(
            principal, search_request(question, k, mode, filter, collection_ids, conversation_id)
        )
        metrics = info.context.services.metrics
        every = info.context.services.settings.subscription_reauth_seconds
        loop = asyncio.get_running_loop()
        recheck_at = loop.time() + every
        with metrics.live_subscription("answer"):
            async with aclosing(events):
                async for event in events:
                    if loop.time() >= recheck_at:
                        try:
                            await info.context.reauthorize(principal)
                        except DomainError as exc:
                            # Then `aclosing` closes `events`: the answer is stored as interrupted.
                            yield types.AnswerError(code=exc.code, message=str(exc))
                            return
                        recheck_at = loop.time() + every
                    _count(metrics, event)
                    yield types.answer_event(event)


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
    ) -> types.AskResult:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.ANSWER, principal)
        result = await info.context.services.generation.ask(
            principal, search_request(question, k, mode, filter, collection_ids, conversation_id)
        )
        return types.ask_result(result)


def _count(metrics: Metrics, event: generation.AnswerEvent) -> None:
    """Counts a streamed token; times the first token when the answer is done."""
    match event:
        case generation.Token():
            metrics.answer_token_streamed()
        case generation.Done(time_to_first_token_ms=ms):
            metrics.answer_first_token(ms / 1000)
        case _:
            pass
