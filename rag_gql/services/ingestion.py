"""Ingestion in two halves: the API stores and queues an upload; a worker indexes it.

`IngestionService.submit` (API process): the upload arrives streamed to a temporary file
(`receive`: SHA-256 and the size limit checked on the way, never whole in memory), its type
is told from its content in bounded time (`parsing.detect_type`: nothing is parsed in the API
process), then ONE transaction stores the document (QUEUED), its bytes (in 1 MiB parts) and
its job.

`IngestionPipeline.run` (worker): PARSING → units counted (MAX_PAGES) then text extracted in
page batches in extraction processes under PARSE_TIMEOUT and PARSE_MAX_MEMORY (`extraction`),
pipelined with EMBEDDING (batched `/api/embed`) and with `COPY` of the chunks, all inside ONE
transaction that ends by setting READY. Nobody ever sees part of a document; a crash loses
only that transaction, and the job's rerun starts again from the stored file. Reindexing is
the same job: the old chunks are deleted in the transaction that writes the new ones, so a
search sees the old set or the new one, never a mix.

Runs are fenced: each takes a new token as it starts (`documents.start_run`) and every write
it makes (progress, each batch's `hold`, READY or FAILED) checks it, so a run overtaken by a
newer one of the same document (its worker stalled, and the recovery started another) stops
at its next write, its transaction rolled back, and writes nothing: the document ends with the
newest run's chunks only, whichever run finishes last.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rag_gql import queue
from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document, DocumentStatus, Workspace
from rag_gql.errors import Conflict, InvalidInput, NotFound, UpstreamError, UpstreamUnavailable
from rag_gql.observability.metrics import Metrics
from rag_gql.providers.ollama import OllamaClient
from rag_gql.repositories import bm25, documents
from rag_gql.repositories import collections as collection_repo
from rag_gql.services import parsing
from rag_gql.services.access import Action, Principal
from rag_gql.services.chunking import chunk_pages
from rag_gql.services.extraction import ExtractionPool
from rag_gql.services.quotas import StorageQuota

log = logging.getLogger(__name__)

MAX_FILENAME_LENGTH = 255
PART_SIZE = 1024 * 1024
"""Bytes per stored file part (and per read of an upload)."""
PROGRESS_INTERVAL = 0.25
"""Seconds between two progress updates of a document (the first batch always reports)."""


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
    ) -> IngestResult:
        """Stores the file and queues its ingestion; returns the QUEUED document at once.

        The same bytes already in the workspace (same SHA-256) return that document with
        `duplicate=True`, and queue nothing.

        Raises:
            Forbidden: the caller's role cannot write (VIEWER).
            NotFound: `collection_id` is not a collection of the workspace.
            InvalidInput: empty, unsupported type, a damaged or encrypted ZIP, over a ZIP
                limit. What only parsing tells (unreadable, encrypted PDF, no pages, over
                MAX_PAGES) ends the document FAILED in the worker instead.
            QuotaExceeded: the workspace's WORKSPACE_MAX_DOCUMENTS or WORKSPACE_MAX_BYTES
                would be passed (nothing is stored).
            Conflict: the same bytes are a document being deleted.
        """
        principal.require(Action.WRITE)
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
            if not await requeue(session, workspace_id, document_id):
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
            workspace_ids = list((await session.execute(select(Workspace.id))).scalars())
        queued = 0
        for workspace_id in workspace_ids:
            async with self._db.transaction(workspace_id) as session:
                ids = (
                    await session.execute(
                        select(Document.id).where(Document.workspace_id == workspace_id)
                    )
                ).scalars()
                for document_id in list(ids):
                    queued += await requeue(session, workspace_id, document_id)
        return queued


async def requeue(
    session: Any,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID,
    *,
    error: str | None = None,
    lease: int | None = None,
    **values: Any,
) -> bool:
    """Sets the document QUEUED (progress reset, `error` as the reason, `values` too) and
    queues its job, in the caller's transaction; False when the document is gone (or, with
    `lease`, a newer run started)."""
    found = await documents.set_state(
        session,
        workspace_id=workspace_id,
        document_id=document_id,
        lease=lease,
        status=DocumentStatus.QUEUED.value,
        pages_done=0,
        chunks_done=0,
        error=error,
        **values,
    )
    if found:
        await queue.defer_ingest(session, document_id=document_id, workspace_id=workspace_id)
    return found


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


class IngestionPipeline:
    """Runs ingestion jobs (worker side): parse → chunk → embed → write, for one document.

    Owns the extraction processes (`PARSE_PROCESSES`, started on first use); call `close`
    when done.
    """

    def __init__(
        self, *, settings: Settings, db: Database, ollama: OllamaClient, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._db = db
        self._ollama = ollama
        self._metrics = metrics
        workers = settings.parse_processes
        self._extraction = ExtractionPool(
            processes=max(1, (os.cpu_count() or 2) // 2) if workers is None else workers,
            timeout=settings.parse_timeout,
            max_memory=settings.parse_max_memory,
        )

    def close(self) -> None:
        """Stops the extraction processes."""
        self._extraction.close()

    async def run(self, document_id: uuid.UUID, workspace_id: uuid.UUID, final: bool) -> None:
        """Indexes one document from its stored file; the procrastinate task's body.

        Records FAILED (with a human reason) for bad files and, on the `final` attempt, for
        Ollama failures. A run overtaken by a newer run of the same document (see the module)
        returns at its next write without writing anything, whatever stopped it.

        Raises:
            UpstreamUnavailable, UpstreamError: Ollama failed and this is not the final
                attempt (the queue retries with backoff; the document shows QUEUED meanwhile).
        """
        async with self._db.transaction(workspace_id) as session:
            document = await documents.get(
                session, workspace_id=workspace_id, document_id=document_id
            )
            lease = await documents.start_run(
                session, workspace_id=workspace_id, document_id=document_id
            )
        if document is None or lease is None:
            await self._discard(workspace_id, document_id)  # a rerun after a deletion mark
            log.info("document %s was deleted before ingestion", document_id)
            return
        run = _Run(document, lease)
        try:
            with tempfile.TemporaryDirectory(prefix="rag-gql-ingest-") as folder:
                path = Path(folder) / "document"
                if await self._fetch_file(document, path):
                    await self._index(run, path)
                else:
                    await self._reembed(run)
            self._metrics.ingest_jobs.labels(outcome="ready").inc()
        except _Stopped:
            await self._stopped(run)
        except InvalidInput as exc:
            self._metrics.ingest_jobs.labels(outcome="failed").inc()
            await self._end(run, status=DocumentStatus.FAILED, error=str(exc))
        except (UpstreamUnavailable, UpstreamError) as exc:
            self._metrics.ingest_jobs.labels(outcome="failed" if final else "retry").inc()
            if final:
                attempts = self._settings.ingest_max_attempts
                await self._end(
                    run,
                    status=DocumentStatus.FAILED,
                    error=f"embedding failed {attempts} times; the last error: {exc}",
                )
                return
            if not await self._end(run, status=DocumentStatus.QUEUED, error=f"will retry: {exc}"):
                return  # deleted, or overtaken by a newer run: no retry of this one
            raise
        except asyncio.CancelledError:
            self._metrics.ingest_jobs.labels(outcome="requeued").inc()
            # The worker is stopping past its grace period (procrastinate marks the job
            # aborted, and never reruns it): queue the document again for another worker.
            await asyncio.shield(self._requeue_interrupted(run))
            raise
        except Exception:
            self._metrics.ingest_jobs.labels(outcome="failed").inc()
            log.exception("ingestion of document %s failed", document.id)
            await self._end(
                run,
                status=DocumentStatus.FAILED,
                error="an internal error stopped the ingestion (the worker's log has the "
                "details); reindex the document to try again",
            )
            raise

    async def _end(self, run: _Run, **values: Any) -> bool:
        """`_set` the run's outcome; when nothing was written, `_stopped`."""
        if await self._set(run, **values):
            return True
        await self._stopped(run)
        return False

    async def _stopped(self, run: _Run) -> None:
        """Deletes the document if it was marked for deletion; logs why the run stopped."""
        if await self._discard(run.document.workspace_id, run.document.id):
            log.info("document %s was deleted during its ingestion", run.document.id)
        else:
            log.warning(
                "ingestion run %d of document %s was overtaken by a newer run (or the "
                "document deleted): it stops without writing",
                run.lease,
                run.document.id,
            )

    async def _discard(self, workspace_id: uuid.UUID, document_id: uuid.UUID) -> bool:
        async with self._db.transaction(workspace_id) as session:
            return await documents.discard(
                session, workspace_id=workspace_id, document_id=document_id
            )

    async def _requeue_interrupted(self, run: _Run) -> None:
        async with self._db.transaction(run.document.workspace_id) as session:
            await requeue(
                session,
                run.document.workspace_id,
                run.document.id,
                lease=run.lease,
                error="interrupted by a worker shutdown; queued again",
            )

    async def _set(self, run: _Run, **values: Any) -> bool:
        """Writes the document's state in a transaction of its own if `run` is still the
        newest run; False (nothing written) when it is not, or the document is gone."""
        status = values.pop("status", None)
        if status is not None:
            values["status"] = status.value
        document = run.document
        async with self._db.transaction(document.workspace_id) as session:
            return await documents.set_state(
                session,
                workspace_id=document.workspace_id,
                document_id=document.id,
                lease=run.lease,
                **values,
            )

    async def _progress(self, run: _Run, **values: Any) -> None:
        """`_set`, raising `_Stopped` when nothing was written."""
        if not await self._set(run, **values):
            raise _Stopped

    async def _hold(self, session: Any, run: _Run) -> None:
        """Keeps the document from being deleted under this transaction; raises `_Stopped`
        when it was deleted (marked) or a newer run started meanwhile, so that the
        transaction rolls back."""
        if not await documents.hold(
            session,
            workspace_id=run.document.workspace_id,
            document_id=run.document.id,
            lease=run.lease,
        ):
            raise _Stopped

    async def _fetch_file(self, document: Document, path: Path) -> bool:
        parts = 0
        async with self._db.transaction(document.workspace_id) as session:
            with path.open("wb") as out:
                async for data in documents.file_parts(
                    session, workspace_id=document.workspace_id, document_id=document.id
                ):
                    await asyncio.to_thread(out.write, data)
                    parts += 1
        return parts > 0

    async def _extracted(self, run: _Run, path: Path) -> AsyncIterator[tuple[int, int, list[str]]]:
        """Counts the units (`page_count` is stored then), then yields `(start, stop, texts)`
        page batches in order, extraction running ahead; all in extraction processes."""
        pool = self._extraction
        document = run.document
        document.page_count = await pool.run(
            repr(document.filename),
            parsing.count_units,
            path,
            document.filename,
            document.media_type,
            max_pages=self._settings.max_pages,
        )
        await self._progress(run, page_count=document.page_count)
        total, step = document.page_count, self._settings.ingest_page_batch
        batches = iter([(start, min(start + step, total)) for start in range(0, total, step)])
        in_flight: collections.deque[tuple[int, int, asyncio.Future[list[str]]]] = (
            collections.deque()
        )

        def extract_next() -> None:
            batch = next(batches, None)
            if batch is not None:
                start, stop = batch
                future = asyncio.ensure_future(
                    pool.run(
                        f"{document.filename!r}, units {start + 1}-{stop}",
                        parsing.extract_units,
                        path,
                        document.media_type,
                        start,
                        stop,
                    )
                )
                in_flight.append((start, stop, future))

        # Keep every extraction process busy, one batch ahead.
        for _ in range(pool.workers + 1):
            extract_next()
        try:
            while in_flight:
                start, stop, future = in_flight.popleft()
                with self._metrics.ingest_stage("extract"):
                    texts = await future
                extract_next()
                yield start, stop, texts
        finally:
            for _start, _stop, pending in in_flight:
                pending.cancel()
            # Let the cancelled calls stop their processes (and retrieve their errors).
            await asyncio.gather(*(pending for *_, pending in in_flight), return_exceptions=True)

    async def _index(self, run: _Run, path: Path) -> None:
        """Two stages joined by a short queue: extract + chunk + embed a batch while the
        previous one is written, all writes in the one transaction that ends READY."""
        settings = self._settings
        document = run.document
        embedded: asyncio.Queue[tuple[int, list[tuple[Any, ...]]] | None] = asyncio.Queue(2)

        async def produce() -> None:
            ordinal = 0
            async for start, stop, texts in self._extracted(run, path):
                spans = chunk_pages(texts, size=settings.chunk_size, overlap=settings.chunk_overlap)
                records: list[tuple[Any, ...]] = []
                if spans:
                    with self._metrics.ingest_stage("embed"):
                        vectors = await self._ollama.embed([span.text for span in spans])
                    records = [
                        (
                            document.workspace_id,
                            document.id,
                            document.collection_id,
                            ordinal + i,
                            start + span.page,
                            span.char_start,
                            span.char_end,
                            span.text,
                            vector,
                        )
                        for i, (span, vector) in enumerate(zip(spans, vectors, strict=True))
                    ]
                    ordinal += len(records)
                await embedded.put((stop, records))
            await embedded.put(None)

        producer = asyncio.create_task(produce())

        async def next_batch() -> tuple[int, list[tuple[Any, ...]]] | None:
            getter = asyncio.ensure_future(embedded.get())
            await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                producer.result()  # the producer failed: raise its error here
                return await embedded.get()
            return getter.result()

        written = 0
        last_progress = -PROGRESS_INTERVAL
        try:
            async with self._db.transaction(document.workspace_id) as session:
                await self._hold(session, run)
                await documents.delete_chunks(
                    session, workspace_id=document.workspace_id, document_id=document.id
                )
                while (batch := await next_batch()) is not None:
                    stop, records = batch
                    await self._hold(session, run)  # deleted or overtaken: stop here
                    with self._metrics.ingest_stage("write"):
                        await documents.copy_chunks(session, records)
                    written += len(records)
                    now = loop_time()
                    if now - last_progress >= PROGRESS_INTERVAL:
                        last_progress = now
                        await self._progress(
                            run,
                            status=DocumentStatus.EMBEDDING,
                            pages_done=stop,
                            chunks_done=written,
                        )
                if written == 0:
                    raise InvalidInput(
                        parsing.no_text_message(document.filename, document.media_type)
                    )
                if not await documents.set_state(
                    session,
                    workspace_id=document.workspace_id,
                    document_id=document.id,
                    lease=run.lease,
                    status=DocumentStatus.READY.value,
                    pages_done=document.page_count,
                    chunks_done=written,
                    chunk_count=written,
                    embed_model=self._ollama.embed_model,
                    error=None,
                ):
                    raise _Stopped
            self._metrics.ingested_pages.inc(document.page_count)
            self._metrics.ingested_chunks.inc(written)
            async with self._db.transaction(document.workspace_id) as session:
                await bm25.compact(
                    session, workspace_id=document.workspace_id, document_id=document.id
                )
        finally:
            producer.cancel()
            # Its error, if any, was raised above by `next_batch`.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer

    async def _reembed(self, run: _Run) -> None:
        """Embeds a document's stored chunk texts again, in one transaction (documents
        uploaded before files were stored: their text is all there is to reindex).

        Raises:
            InvalidInput: the document has neither a stored file nor chunks.
        """
        batch = self._settings.embed_batch_size
        document = run.document
        workspace_id = document.workspace_id
        async with self._db.transaction(workspace_id) as session:
            await self._hold(session, run)
            chunks = await documents.chunk_texts(
                session, workspace_id=workspace_id, document_id=document.id
            )
            if not chunks:
                raise InvalidInput(
                    f"the original file of {document.filename!r} is not stored and it has no "
                    "chunks; upload it again"
                )
            for start in range(0, len(chunks), batch):
                part = chunks[start : start + batch]
                vectors = await self._ollama.embed([text for _id, text in part])
                await self._hold(session, run)
                await documents.set_embeddings(
                    session,
                    [
                        (chunk_id, vector)
                        for (chunk_id, _), vector in zip(part, vectors, strict=True)
                    ],
                )
                await self._progress(
                    run, status=DocumentStatus.EMBEDDING, chunks_done=start + len(part)
                )
            if not await documents.set_state(
                session,
                workspace_id=workspace_id,
                document_id=document.id,
                lease=run.lease,
                status=DocumentStatus.READY.value,
                pages_done=document.page_count,
                chunks_done=len(chunks),
                embed_model=self._ollama.embed_model,
                error=None,
            ):
                raise _Stopped


@dataclass(frozen=True, slots=True)
class _Run:
    """One ingestion run: its document as it started, and its fencing token."""

    document: Document
    lease: int


class _Stopped(Exception):
    """The document was deleted, or a newer run started, while this run went on: its
    transaction rolls back."""


def loop_time() -> float:
    """The running event loop's clock, seconds."""
    return asyncio.get_running_loop().time()


def clean_filename(filename: str | None) -> str:
    """Returns the base name, without control characters, at most 255 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME_LENGTH] or "upload"
