"""Submitting an upload (API process): store the file, its document and its job at once.

The upload arrives streamed to a temporary file (`receive`: SHA-256 and the size limit checked
on the way, never whole in memory), its type is told from its content in bounded time
(`parsing.detect_type`: nothing is parsed in the API process), then ONE transaction stores the
document (QUEUED), its bytes (in 1 MiB parts) and its job (`queue.defer_ingest`), and checks
the storage quota. A reindex queues the document again (`queue.requeue`); the worker side is
`ingestion.pipeline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document, DocumentStatus
from rag_gql.errors import Conflict, InvalidInput, NotFound
from rag_gql.ingestion import queue
from rag_gql.repositories import collections as collection_repo
from rag_gql.repositories import documents
from rag_gql.repositories import workspaces as workspace_repo
from rag_gql.services import parsing
from rag_gql.services.access import Action, Principal
from rag_gql.services.metadata import check_metadata
from rag_gql.services.rate_limits import StorageQuota

MAX_FILENAME_LENGTH = 255
PART_SIZE = 1024 * 1024
"""Bytes per stored file part (and per read of an upload)."""


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """An upload spooled to `path`: its size in bytes and SHA-256 (hex)."""

    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The stored document, and whether it was already there."""

    document: Document
    duplicate: bool


@contextlib.asynccontextmanager
async def receive(
    read: Callable[[int], Awaitable[bytes]], *, filename: str, max_bytes: int
) -> AsyncIterator[ReceivedFile]:
    """Copies an upload to a temporary file, `PART_SIZE` bytes at a time; deletes it on exit.

    `read(n)` returns up to n bytes, `b""` at the end (Starlette's `UploadFile.read`).

    Raises:
        InvalidInput: the upload is empty or larger than `max_bytes` (the message says the limit).
    """
    digest = hashlib.sha256()
    size = 0
    handle, name = tempfile.mkstemp(prefix="rag-gql-upload-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := await read(PART_SIZE):
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput(
                        f"{filename!r} is larger than the upload limit of {max_bytes} bytes "
                        f"({max_bytes / 2**20:.0f} MiB, MAX_UPLOAD_BYTES)"
                    )
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        if size == 0:
            raise InvalidInput(f"{filename!r} is empty")
        yield ReceivedFile(path=path, size_bytes=size, sha256=digest.hexdigest())
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


class IngestionService:
    """Accepts uploads and reindex requests into the caller's workspace (API side)."""

    def __init__(self, *, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._quota = StorageQuota.from_settings(settings)

    async def submit(
        self,
        principal: Principal,
        *,
        filename: str,
        upload: ReceivedFile,
        collection_id: uuid.UUID | None = None,
        metadata: object = None,
    ) -> IngestResult:
        """Stores the file with its user `metadata` (None: `{}`) and queues its ingestion;
        returns the QUEUED document at once.

        The same bytes already in the workspace (same SHA-256) return that document with
        `duplicate=True` (its metadata unchanged), and queue nothing.

        Raises:
            Forbidden: the caller's role cannot write (VIEWER).
            NotFound: `collection_id` is not a collection of the workspace.
            InvalidInput: `metadata` not a flat object within MAX_METADATA_BYTES
                (`check_metadata`); empty, unsupported type, a damaged or encrypted ZIP, over a ZIP
                limit. What only parsing tells (unreadable, encrypted PDF, no pages, over
                MAX_PAGES) ends the document FAILED in the worker instead.
            QuotaExceeded: the workspace's WORKSPACE_MAX_DOCUMENTS or WORKSPACE_MAX_BYTES
                would be passed (nothing is stored).
            Conflict: the same bytes are a document being deleted.
        """
        principal.require(Action.WRITE)
        checked = (
            {}
            if metadata is None
            else check_metadata(metadata, max_bytes=self._settings.max_metadata_bytes)
        )
        filename = clean_filename(filename)
        workspace_id = principal.workspace_id
        async with self._db.transaction(workspace_id) as session:
            if collection_id is not None and not await collection_repo.get(
                session, workspace_id=workspace_id, collection_id=collection_id
            ):
                raise NotFound("Collection not found")
            existing = await documents.get_by_sha256(
                session, workspace_id=workspace_id, sha256=upload.sha256
            )
        if existing is not None and existing.delete_requested_at is not None:
            raise Conflict(f"{filename!r} is being deleted; upload it again in a minute")
        if existing is not None:
            return IngestResult(existing, duplicate=True)
        settings = self._settings
        media_type = await asyncio.to_thread(
            parsing.detect_type,
            upload.path,
            filename,
            zip_limits=parsing.ZipLimits(
                max_entries=settings.zip_max_entries,
                max_uncompressed_bytes=settings.zip_max_uncompressed_bytes,
                max_ratio=settings.zip_max_ratio,
            ),
        )
        document = Document(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            collection_id=collection_id,
            filename=filename,
            sha256=upload.sha256,
            media_type=media_type,
            unit=parsing.unit_of(media_type).value,
            size_bytes=upload.size_bytes,
            page_count=0,  # counted by the worker
            chunk_count=0,
            status=DocumentStatus.QUEUED.value,
            meta=checked,
        )
        try:
            async with self._db.transaction(workspace_id) as session:
                await documents.add(session, document)
                await _store_file(session, document, upload.path)
                await queue.defer_ingest(
                    session, document_id=document.id, workspace_id=workspace_id
                )
                await documents.set_state(
                    session, workspace_id=workspace_id, document_id=document.id
                )
                await self._quota.check(session, document)
        except IntegrityError:
            # The same bytes were uploaded concurrently and won the race.
            async with self._db.transaction(workspace_id) as session:
                existing = await documents.get_by_sha256(
                    session, workspace_id=workspace_id, sha256=upload.sha256
                )
            if existing is None:
                raise
            return IngestResult(existing, duplicate=True)
        async with self._db.transaction(workspace_id) as session:
            stored = await documents.get(
                session, workspace_id=workspace_id, document_id=document.id
            )
        return IngestResult(stored or document, duplicate=False)

    async def reindex(self, principal: Principal, document_id: uuid.UUID) -> Document:
        """Queues a document to be parsed and embedded again with the current model.

        Its current chunks stay searchable until the new ones replace them, at once.

        Raises:
            Forbidden: the caller's role cannot write (VIEWER).
            NotFound: no such document in the workspace.
        """
        principal.require(Action.WRITE)
        workspace_id = principal.workspace_id
        async with self._db.transaction(workspace_id) as session:
            if not await queue.requeue(session, workspace_id, document_id):
                raise NotFound("Document not found")
        async with self._db.transaction(workspace_id) as session:
            document = await documents.get(
                session, workspace_id=workspace_id, document_id=document_id
            )
        if document is None:
            raise NotFound("Document not found")
        return document

    async def reindex_all(self) -> int:
        """Queues every document of every workspace for reindexing (an operator's command,
        after changing the embedding model); returns how many were queued."""
        async with self._db.transaction() as session:
            workspace_ids = await workspace_repo.all_ids(session)
        queued = 0
        for workspace_id in workspace_ids:
            async with self._db.transaction(workspace_id) as session:
                for document_id in await documents.ids(session, workspace_id=workspace_id):
                    queued += await queue.requeue(session, workspace_id, document_id)
        return queued


async def _store_file(session: Any, document: Document, path: Path) -> None:
    with path.open("rb") as source:
        seq = 0
        while data := await asyncio.to_thread(source.read, PART_SIZE):
            await documents.add_file_part(
                session,
                workspace_id=document.workspace_id,
                document_id=document.id,
                seq=seq,
                data=data,
            )
            seq += 1


def clean_filename(filename: str | None) -> str:
    """Returns the base name, without control characters, at most 255 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME_LENGTH] or "upload"
