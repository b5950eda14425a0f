"""Search: the filter (an input) and the hits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from rag_gql.graphql.types.documents import Document
from rag_gql.services import documents, retrieval
from rag_gql.services.metadata import ConditionInput


@strawberry.input(
    description="A condition on the documents' user metadata (`Document.metadata`): a key and "
    "exactly one operator. A list value matches when one of its elements does."
)
class MetadataCondition:
    key: str = strawberry.field(description="The metadata key, 1 to 128 characters.")
    eq: JSON | None = strawberry.field(
        default=None,
        description="The value equals this string, number or boolean (a list value holds "
        "it), or equals this list.",
    )
    in_: list[JSON] | None = strawberry.field(
        default=None,
        name="in",
        description="The value equals one of these 1 to 100 strings, numbers or booleans.",
    )
    gte: JSON | None = strawberry.field(
        default=None,
        description="The value is at least this number, or this string (compared by code "
        "point, as ISO 8601 dates sort); values of another JSON type do not match.",
    )
    lte: JSON | None = strawberry.field(
        default=None,
        description="The value is at most this number or string (as `gte`).",
    )
    exists: bool | None = strawberry.field(
        default=None, description="true: the key is set; false: it is not."
    )

    def to_input(self) -> ConditionInput:
        """The service's condition (checked there)."""
        values: Any = self.in_
        return ConditionInput(
            key=self.key, eq=self.eq, in_=values, gte=self.gte, lte=self.lte, exists=self.exists
        )


@strawberry.input(description="Restricts a search; unset fields do not restrict.")
class SearchFilter:
    collection_ids: list[strawberry.ID] | None = strawberry.field(
        default=None,
        description="Only documents in these collections; `[]` matches nothing.",
    )
    document_ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="Only these documents."
    )
    filenames: list[str] | None = strawberry.field(
        default=None, description="Only documents with one of these exact filenames."
    )
    page_from: int | None = strawberry.field(
        default=None, description="Only pages from this one: 1-based, inclusive."
    )
    page_to: int | None = strawberry.field(
        default=None, description="Only pages up to this one: 1-based, inclusive."
    )
    created_after: datetime | None = strawberry.field(
        default=None, description="Only documents uploaded at or after this time (inclusive)."
    )
    created_before: datetime | None = strawberry.field(
        default=None, description="Only documents uploaded before this time (exclusive)."
    )
    metadata: list[MetadataCondition] | None = strawberry.field(
        default=None,
        description="Only documents whose user metadata meets every one of these conditions "
        "(at most 20).",
    )

    def to_filter(self) -> retrieval.SearchFilter:
        """The retrieval service's filter (ids as sent: it parses them)."""
        return retrieval.SearchFilter(
            collection_ids=_strings(self.collection_ids),
            document_ids=_strings(self.document_ids),
            filenames=self.filenames,
            page_from=self.page_from,
            page_to=self.page_to,
            created_after=self.created_after,
            created_before=self.created_before,
            metadata=conditions(self.metadata),
        )


@strawberry.type(description="A passage that matches a query.")
class SearchHit:
    score: float = strawberry.field(
        description="VECTOR: cosine similarity; KEYWORD: the Okapi BM25 score; HYBRID: the "
        "fused score."
    )
    vector_rank: int | None = strawberry.field(
        description="1-based rank in the vector list, null when not in it."
    )
    keyword_rank: int | None = strawberry.field(
        description="1-based rank in the keyword list, null when not in it."
    )
    text: str = strawberry.field(description="The passage (a chunk of the document).")
    snippet: str = strawberry.field(description="The text around the matches, marked **so**.")
    page: int = strawberry.field(description="1-based page number.")
    char_start: int = strawberry.field(description="Offset in the page's normalized text.")
    char_end: int = strawberry.field(
        description="End offset (exclusive) in the page's normalized text."
    )
    document: Document = strawberry.field(description="The document the passage is from.")
    rerank_score: float | None = strawberry.field(
        default=None,
        description="The reranker's relevance score (its own scale, higher is better); null "
        "when the search was not reranked.",
    )
    reranked: bool = strawberry.field(
        default=False,
        description="Whether this search's hits are in the reranker's order (the same for "
        "every hit of one search): false when no reranking was asked for, or when the "
        "reranker failed and the hits are in fused order.",
    )

    @strawberry.field(
        description="The document's `fileUrl`, with `#page=N` for a paged format (PDF: "
        "its open parameters, RFC 8118) so that a viewer opens the passage's page; without a "
        "fragment for the other formats."
    )
    def url(self) -> str:
        return documents.page_url(self.document.id, self.document.media_type, self.page)

    @classmethod
    def from_hit(cls, hit: retrieval.SearchHit) -> SearchHit:
        return cls(
            score=hit.score,
            vector_rank=hit.vector_rank,
            keyword_rank=hit.keyword_rank,
            text=hit.text,
            snippet=hit.snippet,
            page=hit.page,
            char_start=hit.char_start,
            char_end=hit.char_end,
            document=Document.from_model(hit.document),
            rerank_score=hit.rerank_score,
            reranked=hit.reranked,
        )


def _strings(ids: list[strawberry.ID] | None) -> list[str] | None:
    return None if ids is None else [str(i) for i in ids]


def conditions(metadata: list[MetadataCondition] | None) -> list[ConditionInput] | None:
    """The service's conditions of a metadata filter argument."""
    return None if metadata is None else [c.to_input() for c in metadata]
