"""Reading, paging and deleting the caller's documents, and reading back their stored files
(`GET /documents/{id}/file`, `rag_gql.graphql.files`)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rag_gql.db import Database
from rag_gql.db.models import Document
from rag_gql.errors import InvalidInput, NotFound
from rag_gql.repositories import documents
from rag_gql.services.access import Action, Principal
from rag_gql.services.metadata import ConditionInput, check_conditions, check_metadata
from rag_gql.services.parsing import PDF

MAX_PAGE_SIZE = 100
FILE_PATH = "/documents/{id}/file"
"""Where a document's original file is served (relative to the API's origin)."""
PAGED_MEDIA_TYPES = frozenset({PDF})
"""Formats whose viewers open a page from the URL's fragment `#page=N` (PDF open parameters,
RFC 8118 section 3)."""


def file_url(document_id: uuid.UUID | str) -> str:
    """The path of the document's original file: `/documents/{id}/file`."""
    return FILE_PATH.format(id=document_id)


def page_url(document_id: uuid.UUID | str, media_type: str | None, page: int) -> str:
    """`file_url` with `#page=N` (1-based) for a paged format (`PAGED_MEDIA_TYPES`); without a
    fragment for the others, and when the format is unknown (None)."""
    url = file_url(document_id)
    return f"{url}#page={page}" if media_type in PAGED_MEDIA_TYPES and page >= 1 else url


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A document's stored file: the document and the byte length of each part, in order."""

    document: Document
    part_sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """The file's length in bytes."""
        return sum(self.part_sizes)


@dataclass(frozen=True, slots=True)
class DocumentPage:
    """One page of a listing, newest first; `cursors[i]` is the opaque cursor of `items[i]`.
    `has_previous_page`: documents are newer than the `after` cursor (False without one)."""

    items: list[Document]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool


class DocumentService:
    """The caller's documents; every lookup is scoped to the caller's workspace in SQL."""

    def __init__(self, *, db: Database, max_metadata_bytes: int = 16 * 1024) -> None:
        self._db = db
        self._max_metadata_bytes = max_metadata_bytes

    async def get(self, principal: Principal, document_id: uuid.UUID) -> Document:
        """Returns the caller's document. Raises `NotFound`, also for another's document."""
        async with self._db.transaction(principal.workspace_id) as session:
            document = await documents.get(
                session, workspace_id=principal.workspace_id, document_id=document_id
            )
        if document is None:
            raise NotFound("Document not found")
        return document

    async def open_file(self, principal: Principal, document_id: uuid.UUID) -> StoredFile:
        """The caller's document and the layout of its stored file (no file bytes are read).

        Raises:
            NotFound: no such document in the caller's workspace (another workspace's too), one
                marked for deletion, or one whose file is not stored whole.
        """
        async with self._db.transaction(principal.workspace_id) as session:
            document = await documents.get(
                session, workspace_id=principal.workspace_id, document_id=document_id
            )
            sizes = (
                []
                if document is None
                else await documents.file_part_sizes(
                    session, workspace_id=principal.workspace_id, document_id=document_id
                )
            )
        if document is None:
            raise NotFound("Document not found")
        stored = StoredFile(document=document, part_sizes=tuple(sizes))
        if stored.size != document.size_bytes:
            raise NotFound("This document's file is not stored; upload it again")
        return stored

    async def read_file(
        self, principal: Principal, stored: StoredFile, *, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Yields bytes `start` to `end` (exclusive, 0 <= start <= end <= `stored.size`) of the
        file, at most one stored part (1 MiB) per piece, each read in a transaction of its own
        that ends before the piece is yielded: a slow reader holds no connection.

        Raises:
            NotFound: a part is gone (the document was deleted while it was read).
        """
        workspace_id, document_id = principal.workspace_id, stored.document.id
        offset = 0
        for seq, size in enumerate(stored.part_sizes):
            part_start, part_end = max(start, offset), min(end, offset + size)
            if part_start < part_end:
                async with self._db.transaction(workspace_id) as session:
                    data = await documents.file_part_slice(
                        session,
                        workspace_id=workspace_id,
                        document_id=document_id,
                        seq=seq,
                        start=part_start - offset,
                        length=part_end - part_start,
                    )
                if data is None or len(data) != part_end - part_start:
                    raise NotFound("Document not found")
                yield data
            offset += size
            if offset >= end:
                return

    async def get_many(
        self, principal: Principal, document_ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, Document]:
        """The caller's documents with these ids, by id; ids of none of them are left out."""
        async with self._db.transaction(principal.workspace_id) as session:
            found = await documents.get_many(
                session, workspace_id=principal.workspace_id, document_ids=document_ids
            )
        return {document.id: document for document in found}

    async def list_page(
        self,
        principal: Principal,
        *,
        first: int,
        after: str | None,
        metadata: Sequence[ConditionInput] | None = None,
    ) -> DocumentPage:
        """Returns up to `first` (1..100) documents after the cursor `after`, newest first,
        those whose user metadata meets every condition of `metadata`.

        Raises:
            InvalidInput: `first` out of range, a malformed cursor, a bad condition
                (`check_conditions`).
        """
        if not 1 <= first <= MAX_PAGE_SIZE:
            raise InvalidInput(f"first must be between 1 and {MAX_PAGE_SIZE}")
        before = decode_cursor(after) if after else None
        conditions = check_conditions(metadata) if metadata else []
        async with self._db.transaction(principal.workspace_id) as session:
            rows = await documents.list_page(
                session,
                workspace_id=principal.workspace_id,
                limit=first + 1,
                before=before,
                metadata=conditions,
            )
            newer = before is not None and await documents.any_newer(
                session, workspace_id=principal.workspace_id, than=before, metadata=conditions
            )
        items = rows[:first]
        return DocumentPage(
            items=items,
            cursors=[encode_cursor(d.created_at, d.id) for d in items],
            has_next_page=len(rows) > first,
            has_previous_page=newer,
        )

    async def update_metadata(
        self, principal: Principal, document_id: uuid.UUID, metadata: object
    ) -> Document:
        """Replaces the document's user metadata; returns the document.

        Raises:
            Forbidden: the caller's role cannot write (VIEWER).
            InvalidInput: `metadata` is not a flat object within MAX_METADATA_BYTES
                (`check_metadata`).
            NotFound: no such document in the workspace.
        """
        principal.require(Action.WRITE)
        checked = check_metadata(metadata, max_bytes=self._max_metadata_bytes)
        async with self._db.transaction(principal.workspace_id) as session:
            document = await documents.set_metadata(
                session,
                workspace_id=principal.workspace_id,
                document_id=document_id,
                metadata=checked,
            )
        if document is None:
            raise NotFound("Document not found")
        return document

    async def delete(self, principal: Principal, document_id: uuid.UUID) -> None:
        """Deletes the workspace's document and its chunks.

        Raises:
            Forbidden: the caller's role cannot write (VIEWER).
            NotFound: no such document in the workspace.
        """
        principal.require(Action.WRITE)
        async with self._db.transaction(principal.workspace_id) as session:
            deleted = await documents.delete_document(
                session, workspace_id=principal.workspace_id, document_id=document_id
            )
        if not deleted:
            raise NotFound("Document not found")


def encode_cursor(created_at: datetime, document_id: uuid.UUID) -> str:
    """Returns an opaque cursor for the keyset (created_at, id)."""
    raw = f"{created_at.isoformat()}|{document_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Reverses `encode_cursor`. Raises `InvalidInput` on anything else.

    The time must carry its offset (ours always do) and fit in UTC; `OverflowError` is a
    hand-made time like `9999-12-31T23:59:59-23:59`.
    """
    try:
        created, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("a cursor's time has an offset")
        return created_at.astimezone(UTC), uuid.UUID(ident)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("Malformed cursor") from exc
