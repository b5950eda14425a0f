"""Retrieval and answers: `search`, and the `answer` subscription."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info

DEFAULT_K = 5


@strawberry.type
class SearchQuery:
    @strawberry.field(description="The workspace's passages most similar to `query`, best first.")
    async def search(
        self,
        info: Info,
        query: str,
        k: int | None = DEFAULT_K,
        collection_ids: list[strawberry.ID] | None = None,
    ) -> list[types.SearchHit]:
        principal = await info.context.require_principal()
        hits = await info.context.services.retrieval.search(
            principal,
            query,
            DEFAULT_K if k is None else k,
            collection_ids=_collection_ids(collection_ids),
        )
        return [types.SearchHit.from_hit(hit) for hit in hits]


@strawberry.type
class AnswerSubscription:
    @strawberry.subscription(
        description="Answers from the workspace's documents: sources, tokens as they stream, done."
    )
    async def answer(
        self,
        info: Info,
        question: str,
        k: int | None = DEFAULT_K,
        collection_ids: list[strawberry.ID] | None = None,
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        events = info.context.services.generation.answer(
            principal,
            question,
            DEFAULT_K if k is None else k,
            collection_ids=_collection_ids(collection_ids),
        )
        async for event in events:
            yield types.answer_event(event)


def _collection_ids(ids: list[strawberry.ID] | None) -> list[uuid.UUID] | None:
    """Parses the filter; an id that is not an id matches no collection."""
    if ids is None:
        return None
    parsed: list[uuid.UUID] = []
    for value in ids:
        try:
            parsed.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return parsed
