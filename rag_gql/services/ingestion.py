"""Upload → parse (off the event loop) → chunk → embed in batches → one transaction.

All of one document is written in one transaction, after every step that can fail, so a
failure anywhere leaves nothing behind. The same bytes uploaded twice to one workspace
(same SHA-256) return the first document with `duplicate=True` and embed nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document, DocumentStatus
from rag_gql.errors import InvalidInput, NotFound
from rag_gql.providers.ollama import OllamaClient
from rag_gql.repositories import collections, documents
from rag_gql.services.access import Action, Principal
from rag_gql.services.chunking import chunk_pages
from rag_gql.services.parsing import parse_document

MAX_FILENAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The stored document, and whether it was already there."""

    document: Document
    duplicate: bool


class IngestionService:
    """Ingests uploads into the caller's workspace."""

    def __init__(self, *, settings: Settings, db: Database, ollama: OllamaClient) -> None:
        self._settings = settings
        self._db = db
        self._ollama = ollama

    async def ingest(
        self,
        principal: Principal,
        *,
        filename: str,
        data: bytes,
        collection_id: uuid.UUID | None = None,
    ) -> IngestResult:
        """Stores the document and its embedded chunks in the caller's workspace.

        Raises:
            Forbidden: the caller's role cannot write (VIEWER).
            NotFound: `collection_id` is not a collection of the workspace.
            InvalidInput: empty, too large, not a PDF, corrupt, encrypted, no text layer.
            UpstreamUnavailable, UpstreamError: Ollama failed while embedding (nothing stored).
        """
        principal.require(Action.WRITE)
        filename = clean_filename(filename)
        if len(data) > self._settings.max_upload_bytes:
            raise InvalidInput(
                f"{filename!r} is larger than the {self._settings.max_upload_bytes} byte limit"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        async with self._db.transaction(principal.workspace_id) as session:
            if collection_id is not None and not await collections.get(
                session, workspace_id=principal.workspace_id, collection_id=collection_id
            ):
                raise NotFound("Collection not found")
            existing = await documents.get_by_sha256(
                session, workspace_id=principal.workspace_id, sha256=sha256
            )
        if existing is not None:
            return IngestResult(existing, duplicate=True)

        parsed = await asyncio.to_thread(parse_document, data, filename)
        spans = chunk_pages(
            parsed.pages, size=self._settings.chunk_size, overlap=self._settings.chunk_overlap
        )
        vectors = await self._ollama.embed([span.text for span in spans])

        document = Document(
            id=uuid.uuid4(),
            workspace_id=principal.workspace_id,
            collection_id=collection_id,
            filename=filename,
            sha256=sha256,
            media_type=parsed.media_type,
            size_bytes=len(data),
            page_count=parsed.page_count,
            chunk_count=len(spans),
            status=DocumentStatus.READY.value,
        )
        rows = [
            {
                "workspace_id": principal.workspace_id,
                "document_id": document.id,
                "collection_id": collection_id,
                "ordinal": ordinal,
                "page": span.page,
                "char_start": span.char_start,
                "char_end": span.char_end,
                "text": span.text,
                "embedding": vector,
            }
            for ordinal, (span, vector) in enumerate(zip(spans, vectors, strict=True))
        ]
        try:
            async with self._db.transaction(principal.workspace_id) as session:
                await documents.add(session, document)
                await documents.add_chunks(session, rows)
        except IntegrityError:
            # The same bytes were ingested concurrently and won the race.
            async with self._db.transaction(principal.workspace_id) as session:
                existing = await documents.get_by_sha256(
                    session, workspace_id=principal.workspace_id, sha256=sha256
                )
            if existing is None:
                raise
            return IngestResult(existing, duplicate=True)
        return IngestResult(document, duplicate=False)


def clean_filename(filename: str | None) -> str:
    """Returns the base name, without control characters, at most 255 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME_LENGTH] or "upload"
