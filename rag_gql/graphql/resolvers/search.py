"""Retrieval: `search`, and the arguments it shares with the answers (`answers.py`)."""

from __future__ import annotations

from typing import Annotated

import strawberry

from rag_gql.config import Settings
from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import parse_id, selects
from rag_gql.services.rate_limits import Operation
from rag_gql.services.retrieval import DEFAULT_K, MAX_QUERY_LENGTH, SearchMode, SearchRequest

MAX_K_DEFAULT = Settings.model_fields["search_max_k"].default
"""SEARCH_MAX_K's default, for the schema's description (the schema is the same whatever
the settings)."""

# The arguments `search`, `answer` and `ask` share.
Question = Annotated[
    str, strawberry.argument(description=f"The question, 1 to {MAX_QUERY_LENGTH} characters.")
]
K = Annotated[
    int | None,
    strawberry.argument(
        description=f"How many passages to retrieve: 1 to SEARCH_MAX_K ({MAX_K_DEFAULT} by "
        f"default); null: {DEFAULT_K}."
    ),
]
Mode = Annotated[SearchMode, strawberry.argument(description="How passages are found.")]
Filter = Annotated[
    types.SearchFilter | None,
    strawberry.argument(description="Restricts the passages searched; null: all of them."),
]
CollectionIds = Annotated[
    list[strawberry.ID] | None,
    strawberry.argument(
        description="Only these collections (narrows `filter.collectionIds`); null: all."
    ),
]
Rerank = Annotated[
    bool | None,
    strawberry.argument(
        description="Re-score the best RERANK_CANDIDATES passages with the server's reranker "
        "(a cross-encoder) and keep its best k; null: when one is configured (RERANK_URL). "
        "True where none is configured is BAD_USER_INPUT. A reranker that fails does not fail "
        "the request: the passages come in fused order with `reranked: false`."
    ),
]
ConversationId = Annotated[
    strawberry.ID | None,
    strawberry.argument(
        description="Ask a follow-up in this conversation (one of the caller's); null: start "
        "a new one."
    ),
]


@strawberry.type
class SearchQuery:
    @strawberry.field(
        description="The workspace's passages most similar to `query`, best first. "
        "`diversity` (0 to 1) re-ranks them by maximal marginal relevance, trading relevance "
        "for hits unlike the ones above them (0 or null: off)."
    )
    async def search(
        self,
        info: Info,
        query: Annotated[
            str,
            strawberry.argument(
                description=f"What to look for, 1 to {MAX_QUERY_LENGTH} characters."
            ),
        ],
        k: K = DEFAULT_K,
        mode: Mode = SearchMode.HYBRID,
        filter: Filter = None,
        collection_ids: CollectionIds = None,
        diversity: Annotated[
            float | None,
            strawberry.argument(
                description="0 to 1: how much to favour hits unlike those above them "
                "(maximal marginal relevance); 0 or null: off."
            ),
        ] = None,
        rerank: Rerank = None,
    ) -> list[types.SearchHit]:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.SEARCH, principal)
        hits = await info.context.services.retrieval.search(
            principal,
            search_request(query, k, mode, filter, collection_ids, rerank=rerank),
            diversity=diversity or 0.0,
            snippets=selects(info.selected_fields, "snippet"),
        )
        return [types.SearchHit.from_hit(hit) for hit in hits]


def search_request(
    query: str,
    k: int | None,
    mode: SearchMode,
    filter: types.SearchFilter | None,
    collection_ids: list[strawberry.ID] | None,
    conversation_id: strawberry.ID | None = None,
    *,
    rerank: bool | None = None,
) -> SearchRequest:
    """The service's request from the arguments `search`, `answer` and `ask` share (checked
    by the retrieval service). A malformed `conversationId` is "Conversation not found"."""
    return SearchRequest(
        query=query,
        k=DEFAULT_K if k is None else k,
        mode=mode,
        filter=None if filter is None else filter.to_filter(),
        collection_ids=None if collection_ids is None else [str(c) for c in collection_ids],
        conversation_id=parse_id(conversation_id, "Conversation") if conversation_id else None,
        rerank=rerank,
    )
