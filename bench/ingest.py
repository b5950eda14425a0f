"""Ingest throughput against raw PyMuPDF extraction, and peak memory on the largest PDF.

Usage:
    bash ../shared/corpus/get.sh ./corpus-pdfs      # LaTeX documentation PDFs from Debian
    python bench/ingest.py ./corpus-pdfs [--pdfs N] [--dim 768] [--without-bm25-statistics]

Prints, in one run, side by side:
- the floor: raw PyMuPDF text extraction of every page on ONE core (pages/s);
- the full ingest path of `rag-gql ingest` (store + queue every file, then the worker: parse
  in a process pool, chunk, batched `/api/embed`, `COPY` into PostgreSQL, one transaction a
  document), with embeddings from the loopback Ollama stand-in in its own process answering
  at once (pages/s, chunks/s), and the ratio to the floor (goal >= 0.6x, stretch 0.8x);
  then how long the workspace's own HNSW index takes to build after the load;
- OCR: the first `--ocr-pages` pages of the corpus rendered to images (150 dpi, grayscale)
  as an image-only PDF, read back by `extract_units` with OCR at the defaults (300 dpi, eng)
  on ONE core (pages/s); `--ocr-only` prints just that;
- peak RSS (VmHWM) of the worker process and of its extraction processes while ingesting the
  smallest and the largest PDF alone, each in a fresh process: the largest must not need
  more memory than a page batch's worth over the smallest.

Runs an embedded PostgreSQL in a temporary folder (or uses DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pymupdf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.config import Settings  # noqa: E402 - after the path set-up above
from rag_gql.db import migrate  # noqa: E402
from rag_gql.db.embedded import start_embedded  # noqa: E402

_open: Any = pymupdf.open


def raw_extract(paths: list[Path]) -> tuple[int, float]:
    """The floor: PyMuPDF text extraction of every page, one core. Returns (pages, seconds)."""
    started = time.perf_counter()
    pages = 0
    for path in paths:
        with _open(path) as doc:
            for page in doc:
                page.get_text("text")
                pages += 1
    return pages, time.perf_counter() - started


def ocr_rate(paths: list[Path], pages: int, folder: Path) -> tuple[int, float, int]:
    """OCR on one core: the first `pages` pages of `paths` as scans, read by `extract_units`.
    Returns (pages, seconds, characters read)."""
    from rag_gql.services import parsing

    scan = _open()
    for path in paths:
        with _open(path) as doc:
            for page in doc:
                if len(scan) >= pages:
                    break
                png = page.get_pixmap(dpi=150, colorspace=pymupdf.csGRAY).tobytes("png")
                new = scan.new_page(width=page.rect.width, height=page.rect.height)
                new.insert_image(new.rect, stream=png)
        if len(scan) >= pages:
            break
    target = folder / "scan.pdf"
    scan.save(target)
    count = len(scan)
    started = time.perf_counter()
    extracted = parsing.extract_units(target, parsing.PDF, 0, count)
    seconds = time.perf_counter() - started
    assert extracted.ocr_pages == count, extracted.ocr_pages
    return count, seconds, sum(len(text) for text in extracted.texts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_standin(dim: int) -> tuple[subprocess.Popen[bytes], str]:
    """The Ollama stand-in in its own process (so it does not share the worker's GIL)."""
    port = _free_port()
    command = [sys.executable, "-m", "tests.support.ollama_standin", "--port", str(port)]
    command += ["--dim", str(dim), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT)  # noqa: S603 - our own interpreter
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/api/tags", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the Ollama stand-in did not start")
        time.sleep(0.1)


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds of a live process (with `reaped`: plus its waited-for
    children's, which is how a postmaster's exited backends stay counted)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + ((cutime + cstime) if reaped else 0)) / TICKS


def _postgres_cpu(pgdata: Path | None) -> float:
    """CPU seconds of the embedded server: the postmaster, its live and exited children."""
    if pgdata is None:
        return 0.0
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = _cpu_seconds(postmaster, reaped=True)
    return total + sum(_cpu_seconds(child) for child in _children(postmaster))


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def ingest(settings: Settings, paths: list[Path]) -> dict[str, Any]:
    """Submits `paths` like `rag-gql ingest` and runs a worker until all are done."""
    from rag_gql.eval_command import eval_principal
    from rag_gql.ingestion import bulk
    from rag_gql.ingestion.worker import ingestion_worker
    from rag_gql.resources import open_services
    from rag_gql.services.operators import operator_principal

    async with open_services(settings) as services, ingestion_worker(services):
        principal = await operator_principal(
            services.db, f"bench-{time.time_ns()}", new_workspace=eval_principal
        )
        started = time.perf_counter()
        outcomes = await bulk.submit_all(services, principal, paths, None)
        submitted = time.perf_counter() - started
        await bulk.wait_for(services.db, principal.workspace_id, outcomes)
        elapsed = time.perf_counter() - started
        index_seconds = await _wait_for_vector_index(services, principal.workspace_id)
        registry = services.metrics.registry
        stages = {
            stage: registry.get_sample_value("rag_gql_ingest_stage_seconds_total", {"stage": stage})
            or 0.0
            for stage in ("extract", "embed", "write")
        }
    failed = [f"{o.path.name}: {o.reason}" for o in outcomes if o.status != "READY"]
    return {
        "files": len(paths),
        "pages": sum(o.pages for o in outcomes if o.status == "READY"),
        "chunks": sum(o.chunks for o in outcomes if o.status == "READY"),
        "seconds": elapsed,
        "index_seconds": index_seconds,
        "submit_seconds": submitted,
        "stages": stages,
        "failed": failed,
    }


async def _wait_for_vector_index(services: Any, workspace_id: Any) -> float | None:
    """After the load: seconds until the workspace's own HNSW index (built by the
    `vector_index` job once ingestion settles) is valid; None when it needs none."""
    from rag_gql.ingestion.vector_indexes import exact_scan
    from rag_gql.repositories import vector_indexes

    started = time.perf_counter()
    while True:
        async with services.db.driver_transaction(workspace_id) as conn:
            found = await vector_indexes.state(
                conn, workspace_id=workspace_id, exact=exact_scan(services.settings)
            )
        if found.chunks <= found.threshold:
            return None
        if found.index is True:
            return time.perf_counter() - started
        if time.perf_counter() - started > 1800:
            raise RuntimeError("the workspace's vector index was not built in 30 minutes")
        await asyncio.sleep(0.5)


def measure_rss(settings: Settings, path: Path) -> dict[str, Any]:
    """Ingests one file in this (fresh) process; peak RSS of it and its extraction processes."""
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not done.is_set():
            for pid in (me, *_children(me)):
                peaks[pid] = max(peaks.get(pid, 0), _vm_hwm_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = asyncio.run(ingest(settings, [path]))
    done.set()
    sampler.join()
    me = os.getpid()
    children = [kib for pid, kib in peaks.items() if pid != me]
    return {
        **result,
        "worker_kib": peaks.get(me, 0),
        "extractor_kib": max(children, default=0),
        "size_bytes": path.stat().st_size,
    }


async def _drop_bm25_statistics(url: str) -> None:
    import asyncpg

    from rag_gql.ingestion.queue import conninfo

    conn = await asyncpg.connect(conninfo(url))
    try:
        await conn.execute("ALTER TABLE chunk DISABLE TRIGGER bm25_added")
        await conn.execute("ALTER TABLE chunk DISABLE TRIGGER bm25_removed")
    finally:
        await conn.close()
    print("BM25 statistics triggers disabled (--without-bm25-statistics)")


def _cpu_snapshot(standin: int, pgdata: Path | None) -> dict[str, float]:
    """CPU seconds so far: this process (the worker), its exited children (the extraction
    processes, reaped when the worker stops), the Ollama stand-in, PostgreSQL."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return {
        "worker": me.ru_utime + me.ru_stime,
        "extraction": kids.ru_utime + kids.ru_stime,
        "stand-in": _cpu_seconds(standin),
        "postgres": _postgres_cpu(pgdata),
    }


def rss_in_fresh_process(env: dict[str, str], path: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-of", str(path)]
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        command, env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, nargs="?", help="folder of PDFs")
    parser.add_argument("--pdfs", type=int, default=0, help="only the first N PDFs (0: all)")
    parser.add_argument("--dim", type=int, default=768, help="embedding size (default 768)")
    parser.add_argument(
        "--ocr-pages", type=int, default=8, help="pages for the OCR rate (default 8; 0: none)"
    )
    parser.add_argument("--ocr-only", action="store_true", help="only the OCR rate")
    parser.add_argument(
        "--without-bm25-statistics",
        action="store_true",
        help="disable the triggers that keep the BM25 statistics: shows what they cost",
    )
    parser.add_argument("--rss-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:  # the child of `rss_in_fresh_process`, configured by its environment
        print(json.dumps(measure_rss(Settings(), args.rss_of)))
        return
    if args.corpus is None:
        parser.error("give the corpus folder")
    paths = sorted(args.corpus.rglob("*.pdf"))
    if args.pdfs:
        paths = paths[: args.pdfs]
    if not paths:
        parser.error(f"no PDFs under {args.corpus}")

    folder = Path(tempfile.mkdtemp(prefix="rag-gql-bench-ingest-"))
    if args.ocr_pages:
        ocr_pages, ocr_seconds, characters = ocr_rate(paths, args.ocr_pages, folder)
        print(
            f"OCR, 1 core: {ocr_pages} image-only pages in {ocr_seconds:.1f} s = "
            f"{ocr_pages / ocr_seconds:.2f} pages/s ({characters} characters read)"
        )
        if args.ocr_only:
            return
    url = os.environ.get("DATABASE_URL")
    pg = None if url else start_embedded(folder / "pg", delete_on_stop=True)
    url = url or (pg.url if pg else "")
    standin, ollama_url = start_standin(args.dim)
    try:
        migrate.upgrade(url, embed_dim=args.dim)
        if args.without_bm25_statistics:
            asyncio.run(_drop_bm25_statistics(url))
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "OLLAMA_URL": ollama_url,
            "EMBED_DIM": str(args.dim),
            "DATA_DIR": str(folder / "data"),
        }
        settings = Settings(
            _env_file=None,
            database_url=url,
            ollama_url=ollama_url,
            embed_dim=args.dim,
            data_dir=folder / "data",
        )
        cpus = os.cpu_count() or 1
        print(f"{len(paths)} PDFs from {args.corpus}; {cpus} CPUs; embeddings {args.dim}-d")
        floor_pages, floor_seconds = raw_extract(paths)
        floor_rate = floor_pages / floor_seconds
        pgdata = folder / "pg" if pg is not None else None
        cpu_before = _cpu_snapshot(standin.pid, pgdata)
        full = asyncio.run(ingest(settings, paths))
        cpu = {k: v - cpu_before[k] for k, v in _cpu_snapshot(standin.pid, pgdata).items()}
        rate = full["pages"] / full["seconds"]
        print()
        print(f"{'':34}{'pages':>7}{'seconds':>9}{'pages/s':>9}{'chunks/s':>10}{'ratio':>7}")
        print(
            f"{'raw PyMuPDF extraction, 1 core':34}{floor_pages:>7}{floor_seconds:>9.1f}"
            f"{floor_rate:>9.1f}{'':>10}{'1.00x':>7}   (the floor)"
        )
        print(
            f"{'rag-gql ingest (full path)':34}{full['pages']:>7}{full['seconds']:>9.1f}"
            f"{rate:>9.1f}{full['chunks'] / full['seconds']:>10.1f}"
            f"{rate / floor_rate:>6.2f}x"
        )
        ratio = rate / floor_rate
        verdict = "ok" if ratio >= 0.6 else "MISS"
        stretch = "ok" if ratio >= 0.8 else "MISS"
        print(f"  ratio {ratio:.2f}  goal >= 0.6  {verdict};  stretch >= 0.8  {stretch}")
        if full["index_seconds"] is None:
            print("  vector index: none needed (the workspace is under the exact-scan threshold)")
        else:
            whole = full["pages"] / (full["seconds"] + full["index_seconds"])
            print(
                f"  the workspace's HNSW index, built after the load: {full['index_seconds']:.1f} s"
                f" (load + build: {whole:.1f} pages/s, ratio {whole / floor_rate:.2f})"
            )
        print(
            f"  storing and queueing the files (overlaps the work): {full['submit_seconds']:.1f} s"
        )
        busy = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in full["stages"].items())
        print(f"  time jobs spent per stage, summed over concurrent jobs: {busy}")
        per_page = ", ".join(
            f"{name} {seconds * 1000 / max(full['pages'], 1):.1f}" for name, seconds in cpu.items()
        )
        print(
            f"  CPU ms per page: {per_page}; raw extraction "
            f"{floor_seconds * 1000 / floor_pages:.1f} (2 cores give {2000 / rate:.1f} ms per "
            "page at this rate)"
        )
        for failure in full["failed"]:
            print(f"  not ingested: {failure}")

        by_size = sorted(paths, key=lambda p: p.stat().st_size)
        print()
        header = f"{'peak RSS (VmHWM), alone':34}{'pages':>7}{'MiB':>9}"
        print(header + f"{'worker MiB':>12}{'extractor':>11}")
        for label, path in (("smallest", by_size[0]), ("largest", by_size[-1])):
            rss = rss_in_fresh_process(env, path)
            print(
                f"{label + ' ' + path.name[:24]:34}{rss['pages']:>7}"
                f"{rss['size_bytes'] / 2**20:>9.1f}{rss['worker_kib'] / 1024:>12.1f}"
                f"{rss['extractor_kib'] / 1024:>11.1f}"
            )
    finally:
        standin.terminate()
        standin.wait()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
