"""Retrieval and answers: `search`, and the `answer` subscription."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info

DEFAULT_K = 5


@strawberry.type
class SearchQuery:
    @strawberry.field(description="The workspace's passages most similar to `query`, best first.")
    async def search(
        self, info: Info, query: str, k: int | None = DEFAULT_K
    ) -> list[types.SearchHit]:
        principal = await info.context.require_principal()
        hits = await info.context.services.retrieval.search(
            principal, query, DEFAULT_K if k is None else k
        )
        return [types.SearchHit.from_hit(hit) for hit in hits]


@strawberry.type
class AnswerSubscription:
    @strawberry.subscription(
        description="Answers from the workspace's documents: sources, tokens as they stream, done."
    )
    async def answer(
        self, info: Info, question: str, k: int | None = DEFAULT_K
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        events = info.context.services.generation.answer(
            principal, question, DEFAULT_K if k is None else k
        )
        async for event in events:
            yield types.answer_event(event)
