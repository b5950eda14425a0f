"""Retrieval and answers: `search`, and the `answer` subscription."""

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
from rag_gql.graphql.resolvers.common import parse_id, selects
from rag_gql.repositories.chunks import ChunkScope
from rag_gql.services.answers import Failed, Sources
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
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.ANSWER, principal)
        events = info.context.services.generation.answer(
            principal,
            question,
            DEFAULT_K if k is None else k,
            mode=mode,
            scope=to_scope(filter, collection_ids),
            conversation_id=parse_id(conversation_id, "Conversation") if conversation_id else None,
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
                    metrics.observe_answer_event(item.event)
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
    ) -> types.AskResult:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.ANSWER, principal)
        result = await info.context.services.generation.ask(
            principal,
            question,
            DEFAULT_K if k is None else k,
            mode=mode,
            scope=to_scope(filter, collection_ids),
            conversation_id=parse_id(conversation_id, "Conversation") if conversation_id else None,
        )
        return types.ask_result(result)


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
