"""Documents: `Document`, its connection and its ingestion events."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from rag_gql.graphql.types.common import CURSOR, PageInfo
from rag_gql.graphql.types.enums import DocumentStatus, Unit
from rag_gql.services import documents as document_files
from rag_gql.services.document_events import DocumentState
from rag_gql.services.records import Document as DocumentRecord


@strawberry.type(description="An uploaded document.")
class Document:
    id: strawberry.ID = strawberry.field(description="The document's id.")
    collection_id: strawberry.ID | None = strawberry.field(
        description="The collection it belongs to; null when none."
    )
    filename: str = strawberry.field(
        description="The uploaded file's name, without control characters, at most 255 characters."
    )
    sha256: str = strawberry.field(description="SHA-256 of the file's bytes, hex.")
    media_type: str = strawberry.field(
        description="The file's media type as detected from its bytes and name, like "
        "`application/pdf`."
    )
    size_bytes: float = strawberry.field(description="Size of the file in bytes.")
    unit: Unit = strawberry.field(description="What `pageCount` and hits' `page` count.")
    page_count: int = strawberry.field(
        description="Pages (sections, row blocks) in the file; 0 until the worker has "
        "counted them (while QUEUED, and FAILED before counting)."
    )
    pages_done: int = strawberry.field(description="Pages parsed and embedded so far.")
    chunk_count: int = strawberry.field(description="Chunks searchable (0 until READY).")
    chunks_done: int = strawberry.field(description="Chunks embedded so far in this run.")
    ocr_pages: int = strawberry.field(
        description="Pages whose text was read by OCR (Tesseract) when the document was last "
        "indexed: pages without a text layer, or every page with `OCR=force`; 0 until READY."
    )
    title: str | None = strawberry.field(
        description="The title the file gives itself (PDF metadata or XMP, Office core "
        "properties, HTML `<title>`, EPUB OPF), read when indexed; null when absent or not "
        "yet READY."
    )
    author: str | None = strawberry.field(
        description="The author the file names (as `title`); null when absent."
    )
    authored_at: datetime | None = strawberry.field(
        description="When the file says it was created (as `title`); null when absent."
    )
    metadata: JSON = strawberry.field(
        description="The user's metadata: a flat JSON object of strings, numbers, booleans "
        "or lists of them (`uploadDocument`, `updateDocumentMetadata`); `{}` when none."
    )
    status: DocumentStatus = strawberry.field(description="Where it is in ingestion.")
    error: str | None = strawberry.field(
        description="Why ingestion FAILED (or, while QUEUED again, why it will retry)."
    )
    embed_model: str | None = strawberry.field(description="Model that embedded the chunks.")
    duplicate: bool = strawberry.field(
        description="True when this upload matched a document already in the workspace."
    )
    created_at: datetime = strawberry.field(description="When it was uploaded.")
    updated_at: datetime = strawberry.field(description="When its status or progress last changed.")

    @strawberry.field(
        description="The path of the original file, `/documents/{id}/file`, relative to this "
        "API's origin: `GET` it with the same credentials as `/graphql` (`Range` requests "
        "are answered; see docs/api.md)."
    )
    def file_url(self) -> str:
        return document_files.file_url(self.id)

    @classmethod
    def from_model(cls, doc: DocumentRecord, *, duplicate: bool = False) -> Document:
        return cls(
            id=strawberry.ID(str(doc.id)),
            collection_id=strawberry.ID(str(doc.collection_id)) if doc.collection_id else None,
            filename=doc.filename,
            sha256=doc.sha256,
            media_type=doc.media_type,
            size_bytes=doc.size_bytes,
            unit=Unit(doc.unit),
            page_count=doc.page_count,
            pages_done=doc.pages_done,
            chunk_count=doc.chunk_count,
            chunks_done=doc.chunks_done,
            ocr_pages=doc.ocr_pages,
            title=doc.title,
            author=doc.author,
            authored_at=doc.authored_at,
            metadata=JSON(dict(doc.meta or {})),
            status=DocumentStatus(doc.status),
            error=doc.error,
            embed_model=doc.embed_model,
            duplicate=duplicate,
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


@strawberry.type(description="A change of a document's status or ingestion progress.")
class DocumentEvent:
    document_id: strawberry.ID = strawberry.field(description="The document that changed.")
    status: DocumentStatus = strawberry.field(description="Where it is in ingestion.")
    page_count: int = strawberry.field(
        name="pagesTotal", description="Pages (sections, row blocks) in the file."
    )
    pages_done: int = strawberry.field(description="Pages parsed and embedded so far.")
    chunks_done: int = strawberry.field(description="Chunks embedded so far in this run.")
    chunk_count: int = strawberry.field(description="Chunks searchable (set when READY).")
    error: str | None = strawberry.field(
        description="Why ingestion FAILED (or, while QUEUED again, why it will retry)."
    )
    deleted: bool = strawberry.field(
        default=False,
        description="The document was deleted: this is its last event (with its last "
        "status), and a subscription to this one document completes after it.",
    )

    @classmethod
    def from_state(cls, state: DocumentState) -> DocumentEvent:
        return cls(
            document_id=strawberry.ID(str(state.document_id)),
            status=DocumentStatus(state.status),
            page_count=state.page_count,
            pages_done=state.pages_done,
            chunks_done=state.chunks_done,
            chunk_count=state.chunk_count,
            error=state.error,
            deleted=state.deleted,
        )


@strawberry.type(description="A document and its cursor.")
class DocumentEdge:
    node: Document = strawberry.field(description="The document.")
    cursor: str = strawberry.field(description=CURSOR)


@strawberry.type(description="A page of documents, newest first (a Relay connection).")
class DocumentConnection:
    edges: list[DocumentEdge] = strawberry.field(description="The page's documents, in order.")
    page_info: PageInfo = strawberry.field(description="Where the page is in the whole list.")
