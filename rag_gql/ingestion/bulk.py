"""Bulk loads: `rag-gql ingest PATH...` (and the eval's corpus) through the same queue.

Files are submitted like uploads (type from content, SHA-256 duplicates skipped), then the
caller watches them reach READY or FAILED while workers (an in-process one by default) do
the work; progress is read from the documents' own progress columns.

Metadata: `--metadata key=value` (`parse_metadata_args`) applies to every file, and a sidecar
`NAME.meta.json` beside a file `NAME` (a JSON object, `services.metadata`'s shape) adds its
keys to that file's, replacing those of the same name; sidecars are not ingested themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rag_gql.db import Database
from rag_gql.errors import DomainError
from rag_gql.ingestion.submit import receive
from rag_gql.repositories import documents
from rag_gql.resources import Services
from rag_gql.services.access import Principal

SIDECAR_SUFFIX = ".meta.json"
"""`NAME` + this, beside a file `NAME`: that file's metadata."""
POLL_INTERVAL = 0.5
"""Seconds between two looks at the documents' progress."""
SUBMIT_CONCURRENCY = 4
"""Files stored and queued at once (type checks run in threads, writes on pooled connections)."""


@dataclass(slots=True)
class FileOutcome:
    """What became of one file: `status` is READY, FAILED, DUPLICATE or REJECTED."""

    path: Path
    status: str
    pages: int = 0
    chunks: int = 0
    reason: str | None = None
    document_id: uuid.UUID | None = None


@dataclass(slots=True)
class Progress:
    """Totals while a bulk load runs (what the progress bar shows)."""

    files_total: int
    files_done: int = 0
    pages_total: int = 0
    pages_done: int = 0
    started: float = field(default_factory=time.monotonic)


def walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under `paths` (folders recursively, sorted; hidden entries and
    the sidecars of files beside them skipped)."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                names = set(files)
                for name in sorted(files):
                    if not name.startswith(".") and not _is_sidecar(name, names):
                        yield Path(root) / name
        elif path.is_file():
            yield path


def _is_sidecar(name: str, names: set[str]) -> bool:
    return name.endswith(SIDECAR_SUFFIX) and name.removesuffix(SIDECAR_SUFFIX) in names


def parse_metadata_args(pairs: Sequence[str]) -> dict[str, object]:
    """`key=value` arguments as a metadata object: a value that reads as a JSON number,
    `true` or `false` is that, any other is the string; a key given twice gets a list.

    Raises:
        ValueError: an argument without `=` or with an empty key (the message names it).
    """
    found: dict[str, list[object]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--metadata {pair!r}: expected key=value")
        value: object = raw
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            if isinstance(parsed, bool | int | float):
                value = parsed
        found.setdefault(key.strip(), []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in found.items()}


def file_metadata(path: Path, common: Mapping[str, object]) -> dict[str, object]:
    """`common`, with the keys of `path`'s sidecar (`NAME.meta.json`) when it has one.

    Raises:
        ValueError: the sidecar is not a JSON object (the message names it).
        OSError: the sidecar cannot be read.
    """
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return dict(common)
    try:
        own = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{sidecar.name} is not JSON: {exc}") from None
    if not isinstance(own, dict):
        raise ValueError(f"{sidecar.name} must hold a JSON object")
    return {**common, **own}


async def submit_file(
    services: Services,
    principal: Principal,
    path: Path,
    collection_id: uuid.UUID | None,
    metadata: Mapping[str, object] | None = None,
) -> FileOutcome:
    """Stores and queues one file like an upload, with `metadata` and its sidecar's
    (`file_metadata`); REJECTED with the reason when refused (a bad sidecar too)."""
    try:
        own = file_metadata(path, metadata or {})
    except ValueError as exc:
        return FileOutcome(path, "REJECTED", reason=str(exc))
    except OSError as exc:
        return FileOutcome(path, "REJECTED", reason=f"cannot read its sidecar: {exc}")
    try:
        with path.open("rb") as source:

            async def read(size: int) -> bytes:
                return await asyncio.to_thread(source.read, size)

            async with receive(
                read, filename=path.name, max_bytes=services.settings.max_upload_bytes
            ) as received:
                result = await services.ingestion.submit(
                    principal,
                    filename=path.name,
                    upload=received,
                    collection_id=collection_id,
                    metadata=own,
                )
    except DomainError as exc:
        return FileOutcome(path, "REJECTED", reason=str(exc))
    except OSError as exc:
        return FileOutcome(path, "REJECTED", reason=f"cannot read: {exc.strerror or exc}")
    doc = result.document
    if result.duplicate:
        return FileOutcome(path, "DUPLICATE", doc.page_count, doc.chunk_count, None, doc.id)
    return FileOutcome(path, doc.status, doc.page_count, 0, None, doc.id)


async def submit_all(
    services: Services,
    principal: Principal,
    paths: Sequence[Path],
    collection_id: uuid.UUID | None,
    *,
    metadata: Mapping[str, object] | None = None,
    concurrency: int = SUBMIT_CONCURRENCY,
) -> list[FileOutcome]:
    """`submit_file` for every path (each with `metadata` and its sidecar's), `concurrency`
    at a time; outcomes in the order of `paths`.

    Files with the same bytes submitted at once still make one document: the other is a
    DUPLICATE (the database's unique SHA-256 per workspace decides).
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(path: Path) -> FileOutcome:
        async with gate:
            return await submit_file(services, principal, path, collection_id, metadata)

    return list(await asyncio.gather(*(one(path) for path in paths)))


async def wait_for(
    db: Database,
    workspace_id: uuid.UUID,
    outcomes: Sequence[FileOutcome],
    on_progress: Callable[[Progress], None] | None = None,
) -> None:
    """Polls until every queued file's document is READY or FAILED; fills in `outcomes`."""
    waiting = {o.document_id: o for o in outcomes if o.status not in ("DUPLICATE", "REJECTED")}
    progress = Progress(files_total=len(outcomes))
    progress.files_done = len(outcomes) - len(waiting)
    progress.pages_total = sum(o.pages for o in waiting.values())
    while True:
        async with db.transaction(workspace_id) as session:
            rows = await documents.get_many(
                session,
                workspace_id=workspace_id,
                document_ids=[document_id for document_id in waiting if document_id is not None],
            )
        pages_done = 0
        files_done = len(outcomes) - len(waiting)
        for row in rows:
            outcome = waiting[row.id]
            outcome.pages = row.page_count  # counted by the worker, 0 until then
            if row.status in ("READY", "FAILED"):
                outcome.status, outcome.chunks, outcome.reason = (
                    row.status,
                    row.chunk_count,
                    row.error,
                )
                files_done += 1
                pages_done += outcome.pages
            else:
                pages_done += row.pages_done
        found = {row.id for row in rows}
        for document_id, outcome in waiting.items():
            if document_id not in found:  # deleted meanwhile
                outcome.status, outcome.reason = "FAILED", "deleted while ingesting"
                files_done += 1
        progress.files_done, progress.pages_done = files_done, pages_done
        progress.pages_total = sum(o.pages for o in waiting.values())
        if on_progress is not None:
            on_progress(progress)
        if all(o.status in ("READY", "FAILED") for o in waiting.values()):
            return
        await asyncio.sleep(POLL_INTERVAL)


def summary_table(outcomes: Sequence[FileOutcome]) -> str:
    """The closing report: counts by outcome, then one line per file that did not make it."""
    counts = {
        "ingested": sum(o.status == "READY" for o in outcomes),
        "duplicates": sum(o.status == "DUPLICATE" for o in outcomes),
        "failed": sum(o.status in ("FAILED", "REJECTED") for o in outcomes),
    }
    pages = sum(o.pages for o in outcomes if o.status == "READY")
    chunks = sum(o.chunks for o in outcomes if o.status == "READY")
    lines = [
        f"{'outcome':<12}{'files':>8}",
        f"{'ingested':<12}{counts['ingested']:>8}   ({pages} pages, {chunks} chunks)",
        f"{'duplicates':<12}{counts['duplicates']:>8}",
        f"{'failed':<12}{counts['failed']:>8}",
    ]
    failed = [o for o in outcomes if o.status in ("FAILED", "REJECTED")]
    if failed:
        lines += ["", "failed:"]
        lines += [f"  {o.path}: {o.reason or 'unknown reason'}" for o in failed]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[Progress], None]]:
    """A tqdm bar over pages, with files done and pages/s; a no-op when not `enabled`."""
    if not enabled:
        yield lambda _progress: None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit="page", dynamic_ncols=True, smoothing=0.1)

    def update(progress: Progress) -> None:
        bar.total = progress.pages_total
        bar.n = progress.pages_done
        bar.set_postfix_str(f"files {progress.files_done}/{progress.files_total}", refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
