"""The indexing pipeline (worker side): one document from its stored file to READY chunks.

`IngestionPipeline.run`: PARSING → units counted (MAX_PAGES) then text extracted in page
batches in extraction processes under PARSE_TIMEOUT and PARSE_MAX_MEMORY (`extraction`),
pipelined with EMBEDDING (batched `/api/embed`) and with `COPY` of the chunks, all inside ONE
transaction that ends by setting READY. Nobody ever sees part of a document; a crash loses
only that transaction, and the job's rerun starts again from the stored file. Reindexing is
the same job: the old chunks are deleted in the transaction that writes the new ones, so a
search sees the old set or the new one, never a mix. (That transaction is open across the
`/api/embed` calls: the stated exception to the transaction rules, docs/architecture.md.)

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
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document, DocumentStatus
from rag_gql.errors import InvalidInput, UpstreamError, UpstreamUnavailable
from rag_gql.ingestion import queue
from rag_gql.ingestion.vector_indexes import VectorIndexes
from rag_gql.observability.metrics import Metrics
from rag_gql.providers.ollama import OllamaClient
from rag_gql.repositories import bm25, documents
from rag_gql.repositories import chunks as chunk_repo
from rag_gql.repositories.chunks import ChunkRecord, embedding_input
from rag_gql.services import parsing, properties
from rag_gql.services.chunking import ChunkSpan, chunk_pages
from rag_gql.services.context import chunk_contexts
from rag_gql.services.extraction import ExtractionPool
from rag_gql.services.ocr import OcrOptions
from rag_gql.services.properties import FileProperties

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25
"""Seconds between two progress updates of a document (the first batch always reports)."""


class IngestionPipeline:
    """Runs ingestion jobs (worker side): parse → chunk → embed → write, for one document.

    Owns the extraction processes (`PARSE_PROCESSES`, started on first use); call `close`
    when done.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        ollama: OllamaClient,
        metrics: Metrics,
        vector_indexes: VectorIndexes | None = None,
    ) -> None:
        """`vector_indexes`: where a READY document schedules its workspace's index upkeep
        (None: no upkeep scheduled, as in tests of the pipeline alone)."""
        self._vector_indexes = vector_indexes
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
        self._ocr = OcrOptions.from_settings(settings)

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
            await queue.requeue(
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

    async def _extracted(
        self, run: _Run, path: Path
    ) -> AsyncIterator[tuple[int, int, parsing.Extracted]]:
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
        in_flight: collections.deque[tuple[int, int, asyncio.Future[parsing.Extracted]]] = (
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
                        ocr=self._ocr,
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

    async def _properties(self, document: Document, path: Path) -> FileProperties:
        """The file's title, author and date, read in an extraction process; none when that
        process fails (over its time or memory): properties never fail a document."""
        try:
            return await self._extraction.run(
                f"{document.filename!r}, properties",
                properties.file_properties,
                path,
                document.media_type,
            )
        except InvalidInput:
            return FileProperties()

    async def _index(self, run: _Run, path: Path) -> None:
        """Two stages joined by a short queue: extract + chunk + embed a batch while the
        previous one is written, all writes in the one transaction that ends READY."""
        settings = self._settings
        document = run.document
        embedded: asyncio.Queue[tuple[int, list[ChunkRecord]] | None] = asyncio.Queue(2)
        ocr_pages = 0
        # The file's title, author and date, read beside the first batches: the title opens
        # every chunk's context, and all three are stored with READY.
        found_properties = asyncio.ensure_future(self._properties(document, path))

        async def produce() -> None:
            nonlocal ocr_pages
            ordinal = 0
            title = ""
            async for start, stop, extracted in self._extracted(run, path):
                if start == 0:
                    title = (await found_properties).title or PurePosixPath(document.filename).stem
                ocr_pages += extracted.ocr_pages
                spans = chunk_pages(
                    extracted.texts, size=settings.chunk_size, overlap=settings.chunk_overlap
                )
                records: list[ChunkRecord] = []
                if spans:
                    contexts = self._contexts(spans, extracted, title)
                    with self._metrics.ingest_stage("embed"):
                        vectors = await self._ollama.embed(
                            [
                                self._embedding_input(context, span.text)
                                for context, span in zip(contexts, spans, strict=True)
                            ]
                        )
                    records = [
                        ChunkRecord(
                            workspace_id=document.workspace_id,
                            document_id=document.id,
                            collection_id=document.collection_id,
                            ordinal=ordinal + i,
                            page=start + span.page,
                            char_start=span.char_start,
                            char_end=span.char_end,
                            text=span.text,
                            embedding=vector,
                            context=context,
                        )
                        for i, (span, vector, context) in enumerate(
                            zip(spans, vectors, contexts, strict=True)
                        )
                    ]
                    ordinal += len(records)
                await embedded.put((stop, records))
            await embedded.put(None)

        producer = asyncio.create_task(produce())

        async def next_batch() -> tuple[int, list[ChunkRecord]] | None:
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
                await chunk_repo.delete_chunks(
                    session, workspace_id=document.workspace_id, document_id=document.id
                )
                while (batch := await next_batch()) is not None:
                    stop, records = batch
                    await self._hold(session, run)  # deleted or overtaken: stop here
                    with self._metrics.ingest_stage("write"):
                        await chunk_repo.copy_chunks(session, records)
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
                        parsing.no_text_message(
                            document.filename, document.media_type, ocr=self._ocr.mode
                        )
                    )
                found = await found_properties
                if not await documents.set_state(
                    session,
                    workspace_id=document.workspace_id,
                    document_id=document.id,
                    lease=run.lease,
                    status=DocumentStatus.READY.value,
                    pages_done=document.page_count,
                    chunks_done=written,
                    chunk_count=written,
                    ocr_pages=ocr_pages,
                    title=found.title,
                    author=found.author,
                    authored_at=found.authored_at,
                    embed_model=self._ollama.embed_model,
                    error=None,
                ):
                    raise _Stopped
                if self._vector_indexes is not None:
                    await self._vector_indexes.schedule(session, document.workspace_id)
            self._metrics.ingested_pages.inc(document.page_count)
            self._metrics.ingested_chunks.inc(written)
            async with self._db.transaction(document.workspace_id) as session:
                await bm25.compact(
                    session, workspace_id=document.workspace_id, document_id=document.id
                )
        finally:
            found_properties.cancel()
            producer.cancel()
            # Its error, if any, was raised above by `next_batch`.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await found_properties

    def _contexts(
        self, spans: Sequence[ChunkSpan], extracted: parsing.Extracted, title: str
    ) -> list[str]:
        """Each chunk's context prefix (`services/context.py`): `title` and its heading path;
        all "" when CONTEXT_PREFIX is off."""
        if self._settings.context_prefix == "off":
            return [""] * len(spans)
        return chunk_contexts(spans, extracted.texts, extracted.headings, title=title)

    def _embedding_input(self, context: str, text: str) -> str:
        """What is embedded for a chunk: `embedding_input`, with its context only when
        CONTEXT_PREFIX is on (`keyword`: the context is in its keyword text alone)."""
        return embedding_input(context if self._settings.context_prefix == "on" else "", text)

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
            chunks = await chunk_repo.chunk_texts(
                session, workspace_id=workspace_id, document_id=document.id
            )
            if not chunks:
                raise InvalidInput(
                    f"the original file of {document.filename!r} is not stored and it has no "
                    "chunks; upload it again"
                )
            for start in range(0, len(chunks), batch):
                part = chunks[start : start + batch]
                vectors = await self._ollama.embed(
                    [self._embedding_input(context, text) for _id, context, text in part]
                )
                await self._hold(session, run)
                await chunk_repo.set_embeddings(
                    session,
                    [
                        (chunk_id, vector)
                        for (chunk_id, _, _), vector in zip(part, vectors, strict=True)
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
