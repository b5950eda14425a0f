"""Retrieval: `search`, and the arguments it shares with the answers (`answers.py`)."""

from __future__ import annotations

import uuid
from typing import Annotated

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import selects
from rag_gql.repositories.chunks import ChunkScope
from rag_gql.services.quotas import Operation
from rag_gql.services.retrieval import MAX_QUERY_LENGTH, SearchMode

DEFAULT_K = 5

# The arguments `search`, `answer` and `ask` share.
Question = Annotated[
    str, strawberry.argument(description=f"The question, 1 to {MAX_QUERY_LENGTH} characters.")
]
K = Annotated[
    int | None,
    strawberry.argument(
        description="How many passages to retrieve: 1 to SEARCH_MAX_K (50 by default); "
        f"null: {DEFAULT_K}."
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
    ) -> list[types.SearchHit]:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.SEARCH, principal)
        hits = await info.context.services.retrieval.search(
            principal,
            query,
            DEFAULT_K if k is None else k,
            mode=mode,
            scope=to_scope(filter, collection_ids),
            diversity=diversity or 0.0,
            snippets=selects(info.selected_fields, "snippet"),
        )
        return [types.SearchHit.from_hit(hit) for hit in hits]


def to_scope(
    filter: types.SearchFilter | None, collection_ids: list[strawberry.ID] | None
) -> ChunkScope | None:
    """Builds the search scope; `collectionIds` (top level) narrows `filter.collectionIds`."""
    if filter is None and collection_ids is None:
        return None
    f = filter or types.SearchFilter()
    collections = _ids(f.collection_ids)
    if collection_ids is not None:
        top = _ids(collection_ids) or []
        collections = top if collections is None else [c for c in collections if c in top]
    return ChunkScope(
        collection_ids=collections,
        document_ids=_ids(f.document_ids),
        # Stored names have no control characters (`clean_filename`), and PostgreSQL text
        # cannot hold NUL: such a name matches nothing.
        filenames=None
        if f.filenames is None
        else [name for name in f.filenames if name.isprintable()],
        page_from=f.page_from,
        page_to=f.page_to,
        created_after=f.created_after,
        created_before=f.created_before,
    )


def _ids(values: list[strawberry.ID] | None) -> list[uuid.UUID] | None:
    """Parses ids; one that is not an id matches nothing (it is left out)."""
    if values is None:
        return None
    parsed: list[uuid.UUID] = []
    for value in values:
        try:
            parsed.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return parsed
