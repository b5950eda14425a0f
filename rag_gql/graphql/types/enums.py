"""The services' enums, registered as GraphQL enums with a description for each value
(services never import strawberry); import them from here so that they are registered."""

from __future__ import annotations

import enum

import strawberry
from strawberry.types.enum import has_enum_definition

from rag_gql.services.parsing import Unit
from rag_gql.services.records import DocumentStatus, Role
from rag_gql.services.retrieval import SearchMode

__all__ = ["DocumentStatus", "Role", "SearchMode", "Unit"]


def _enum(
    cls: type[enum.Enum], *, description: str, values: dict[str, str], name: str | None = None
) -> None:
    """Registers a service's enum (services never import strawberry) as a GraphQL enum, with
    a description for each value (`strawberry.enum_value` would have to be in the enum)."""
    strawberry.enum(cls, name=name, description=description)
    assert has_enum_definition(cls)
    for value in cls.__strawberry_definition__.values:
        value.description = values[value.name]


_enum(
    DocumentStatus,
    description="Where a document is in ingestion: QUEUED, PARSING, EMBEDDING, then READY or "
    "FAILED.",
    values={
        "QUEUED": "Stored and waiting for an ingestion worker (again, while a failed attempt "
        "waits to be retried; `error` says why).",
        "PARSING": "Its text is being extracted, page by page.",
        "EMBEDDING": "Its chunks are being embedded.",
        "READY": "Searchable: every chunk is embedded.",
        "FAILED": "Ingestion stopped for good; `error` says why.",
    },
)
_enum(
    Unit,
    name="DocumentUnit",
    description="What a document's pages are: PAGE (PDF, EPUB, XPS...), SECTION (DOCX, HTML, "
    "Markdown, text: heading-delimited sections), ROWS (CSV: blocks of rows).",
    values={
        "PAGE": "PDF, XPS and CBZ pages; EPUB, MOBI and FB2 pages as they are laid out.",
        "SECTION": "DOCX, HTML, Markdown: heading-delimited sections; plain text: paragraphs "
        "up to about 4 KB.",
        "ROWS": "CSV: blocks of 50 rows.",
    },
)
_enum(
    Role,
    description="A role in a workspace: OWNER > ADMIN (members, API keys) > EDITOR (upload, "
    "delete) > VIEWER (search, answer).",
    values={
        "OWNER": "Everything an ADMIN may do, and grant OWNER; a workspace keeps at least one.",
        "ADMIN": "Manages members, invitations and API keys, besides what an EDITOR may do.",
        "EDITOR": "Uploads, reindexes and deletes documents and collections, besides what a "
        "VIEWER may do.",
        "VIEWER": "Reads documents, searches and asks questions.",
    },
)
_enum(
    SearchMode,
    description="VECTOR: embeddings (HNSW, cosine). KEYWORD: full-text. HYBRID: both, fused "
    "by reciprocal rank fusion.",
    values={
        "VECTOR": "Passages whose embeddings are nearest the query's (cosine similarity).",
        "KEYWORD": "Passages that match any of the query's words (PostgreSQL full-text "
        "search), ranked by Okapi BM25 over the workspace's own statistics.",
        "HYBRID": "Both lists, fused by reciprocal rank fusion; the default.",
    },
)
