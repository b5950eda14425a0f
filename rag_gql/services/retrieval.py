"""Vector search over the caller's chunks (pgvector HNSW, cosine)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document
from rag_gql.errors import InvalidInput
from rag_gql.providers.ollama import OllamaClient
from rag_gql.repositories import documents
from rag_gql.services.access import Action, Principal

MAX_QUERY_LENGTH = 4000


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A chunk that matches: `score` is cosine similarity (1 - cosine distance, in [-1, 1])."""

    chunk_id: int
    score: float
    text: str
    page: int
    char_start: int
    char_end: int
    document: Document


class RetrievalService:
    """Finds the chunks of the caller's workspace nearest to a query."""

    def __init__(self, *, settings: Settings, db: Database, ollama: OllamaClient) -> None:
        self._settings = settings
        self._db = db
        self._ollama = ollama

    async def search(
        self,
        principal: Principal,
        query: str,
        k: int,
        *,
        collection_ids: Sequence[uuid.UUID] | None = None,
    ) -> list[SearchHit]:
        """Returns the workspace's `k` chunks most similar to `query`, best first.

        With `collection_ids`, only from documents in those collections (ids of other
        workspaces' collections simply match nothing).

        Raises:
            InvalidInput: empty or over-long query, `k` outside 1..SEARCH_MAX_K.
            UpstreamUnavailable, UpstreamError: the query could not be embedded.
        """
        principal.require(Action.READ)
        query = query.strip()
        if not query:
            raise InvalidInput("The query is empty")
        if len(query) > MAX_QUERY_LENGTH:
            raise InvalidInput(f"The query is longer than {MAX_QUERY_LENGTH} characters")
        if not 1 <= k <= self._settings.search_max_k:
            raise InvalidInput(f"k must be between 1 and {self._settings.search_max_k}")
        (vector,) = await self._ollama.embed([query])
        # The transaction opens after the Ollama call: nothing holds a connection across it.
        async with self._db.transaction(principal.workspace_id) as session:
            hits = await documents.nearest_chunks(
                session,
                workspace_id=principal.workspace_id,
                embedding=vector,
                k=k,
                ef_search=self._settings.hnsw_ef_search,
                collection_ids=collection_ids,
            )
        return [
            SearchHit(
                chunk_id=h.chunk_id,
                score=1.0 - h.distance,
                text=h.text,
                page=h.page,
                char_start=h.char_start,
                char_end=h.char_end,
                document=h.document,
            )
            for h in hits
        ]
