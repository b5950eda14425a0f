"""Nothing an upload contains blocks the API process: linear-time sniffing, ZIP caps read from
the central directory, entity bombs inert, and parsing in extraction processes whose time and
memory limits fail one document, never the pool or the server."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openpyxl
import pytest

import rag_gql
from rag_gql import evaluation
from rag_gql.config import Settings
from rag_gql.errors import InvalidInput
from rag_gql.graphql import files, view
from rag_gql.ingestion.pipeline import IngestionPipeline
from rag_gql.observability import logs
from rag_gql.services import chunking, citations, parsing, pgtext, properties
from rag_gql.services.extraction import ExtractionLimit, ExtractionPool
from tests.support import hostile
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.pdfs import make_pdf
from tests.support.serving import serve
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error, upload_error, upload_ok

DOCUMENT = "query($id: ID!) { document(id: $id) { status error pageCount } }"

# Each pattern that sees uploaded (or otherwise user-sent) text, with the input that would
# make a backtracking pattern fail slowly: the input grows with n.
ADVERSARIAL: list[tuple[str, Callable[[int], object]]] = [
    ("services.parsing._HTML_TAG", lambda n: parsing._HTML_TAG.search("<div" * n)),
    (
        "services.parsing._MARKDOWN_HINT",
        lambda n: parsing._MARKDOWN_HINT.search("](" * n + "#" + " " * n),
    ),
    (
        "services.parsing._SETEXT_UNDERLINE",
        lambda n: parsing._SETEXT_UNDERLINE.fullmatch("=" * n + "x"),
    ),
    ("services.parsing._ALGORITHM", lambda n: parsing._ALGORITHM.findall(b'Algorithm="' * n)),
    ("services.parsing._HTML_HEADING", lambda n: parsing._HTML_HEADING.sub(" ", "\x01x" * n)),
    (
        "services.parsing._BLANK_LINE",
        lambda n: parsing._BLANK_LINE.split(("\n" + " \t" * 8 + "x") * n),
    ),
    ("services.parsing._starts_html", lambda n: parsing._starts_html("<!---->" * n + "x")),
    ("services.parsing._looks_like_markdown", lambda n: parsing._looks_like_markdown("x\n=-" * n)),
    (
        "services.parsing._looks_like_csv",  # csv.Sniffer took quadratic time on this
        lambda n: parsing._looks_like_csv("\n".join([',"a' * n] * 19), complete=True),
    ),
    (
        "services.chunking._WHITESPACE_RUN",
        lambda n: chunking._WHITESPACE_RUN.sub(" ", " \t" * n + "x"),
    ),
    (
        "services.chunking._BLANK_LINES",
        lambda n: chunking._BLANK_LINES.split("\n" + " \n" * n + "x"),
    ),
    (  # a character class: linear whatever the text (a PDF page's text, half surrogates)
        "services.pgtext._SURROGATE",
        lambda n: pgtext._SURROGATE.sub("\ufffd", "\ud800x" * n),
    ),
    ("services.citations._MARKER", lambda n: citations._MARKER.findall("[1" + " , 1" * n)),
    (
        "observability.logs._SECRETS",
        lambda n: [p.sub(r, "bearer eyJ" + "a-" * n) for p, r in logs._SECRETS],
    ),
    ("graphql.view._HOST", lambda n: view._HOST.fullmatch("a." * n + ":")),
    (
        "graphql.files._RANGE",
        lambda n: files._RANGE.fullmatch("bytes=" + "1" * n + "-" + "2" * n + "x"),
    ),
    ("evaluation._CITATION", lambda n: evaluation._CITATION.findall("[12" * n + "]")),
    (
        "services.properties._PDF_DATE",  # a PDF's creationDate, as the file says it
        lambda n: properties._PDF_DATE.match("D:2024" + " " * n + "+" + "'" * n),
    ),
]
# Module-level patterns that never see what a user sends.
NOT_ON_USER_TEXT = {
    "rag_gql.observability.requests._ACCEPTABLE_ID",  # fullmatch of {1,64}: bounded
    "rag_gql.db.embedded._IDENTIFIER",  # operator configuration
}


def _best_of(runs: int, call: Callable[[], object]) -> float:
    """The least CPU time of this thread (seconds) `call` took in `runs` runs: time the
    machine gave other processes does not count, so a loaded machine skews it little."""
    best = float("inf")
    for _ in range(runs):
        start = time.thread_time()
        call()
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.parametrize(("name", "run"), ADVERSARIAL, ids=[name for name, _ in ADVERSARIAL])
def test_patterns_on_user_text_take_linear_time(name: str, run: Callable[[int], object]) -> None:
    # Inputs large enough that neither fits a cache: linear is then 8x, quadratic 64x. The
    # gap and a few ms of slack absorb a loaded machine's noise without letting a quadratic
    # pattern through.
    n = 8000
    small = _best_of(5, lambda: run(n))
    large = _best_of(5, lambda: run(8 * n))
    assert large < 32 * small + 0.01, (name, small, large)


def _module_patterns() -> Iterator[str]:
    for module_info in pkgutil.walk_packages(rag_gql.__path__, "rag_gql."):
        module = importlib.import_module(module_info.name)
        for attribute, value in vars(module).items():
            values = value if isinstance(value, tuple | list) else [value]
            flat = [v for item in values for v in (item if isinstance(item, tuple) else [item])]
            if any(isinstance(v, re.Pattern) for v in flat):
                yield f"{module_info.name}.{attribute}"


def test_every_module_pattern_is_checked_on_adversarial_input() -> None:
    checked = {f"rag_gql.{name}" for name, _ in ADVERSARIAL}
    unchecked = set(_module_patterns()) - checked - NOT_ON_USER_TEXT
    assert not unchecked, f"add these to ADVERSARIAL (or NOT_ON_USER_TEXT): {unchecked}"


def test_the_backtracking_bait_is_typed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bait.txt"
    path.write_bytes(hostile.backtracking_bait(40))
    assert len(path.read_bytes()) < 320
    start = time.perf_counter()
    assert parsing.detect_type(path, "bait") == parsing.TEXT
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("kind", sorted(hostile.ZIP_SAMPLES))
def test_zip_caps_apply_to_every_zip_based_format(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.{kind}"
    path.write_bytes(hostile.zip_bomb(kind))
    with pytest.raises(InvalidInput, match=r"compressed 10\d\d to 1 .*ZIP_MAX_RATIO"):
        parsing.detect_type(path, path.name)
    path.write_bytes(hostile.crowded_zip(kind, 30))
    few = parsing.ZipLimits(max_entries=20)
    with pytest.raises(InvalidInput, match=r"entries; the limit is 20 \(ZIP_MAX_ENTRIES\)"):
        parsing.detect_type(path, path.name, zip_limits=few)
    small = parsing.ZipLimits(max_uncompressed_bytes=1000)
    with pytest.raises(InvalidInput, match=r"the limit is 1000 bytes \(ZIP_MAX_UNCOMPRESSED"):
        parsing.detect_type(path, path.name, zip_limits=small)
    # Within the caps, the same archive is told by its members as before.
    assert parsing.detect_type(path, path.name) == parsing.detect_type(
        hostile.FORMATS / hostile.ZIP_SAMPLES[kind], "sample"
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("laughs.docx", hostile.billion_laughs_docx(4)),
        ("bomb.docx", hostile.billion_laughs_docx(10)),
        ("laughs.html", hostile.billion_laughs_html(10)),
    ],
)
def test_xml_entities_are_not_expanded(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    try:
        inspection = parsing.inspect_file(path, name, max_pages=10)
    except InvalidInput as exc:  # libxml2 refuses the amplification outright
        assert "not a readable DOCX" in str(exc)
        return
    texts = parsing.extract_units(path, inspection.media_type, 0, inspection.unit_count).texts
    assert "lollol" not in "".join(texts) and sum(map(len, texts)) < 200, texts


@pytest.fixture
def processes() -> Iterator[ExtractionPool]:
    pool = ExtractionPool(processes=1, timeout=2, max_memory=1 << 30)
    yield pool
    pool.close()


async def test_a_call_past_the_timeout_fails_and_the_pool_goes_on(
    processes: ExtractionPool,
) -> None:
    first = await processes.run("warm-up", hostile.process_id)
    with pytest.raises(ExtractionLimit, match=r"took longer than the limit of 2 seconds"):
        await processes.run("'slow.txt'", hostile.sleep_for, 30)
    # pebble stopped that process and started another, which takes the next call.
    assert await processes.run("next", hostile.process_id) != first


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ((hostile.allocate, 2048), "memory limit of 1024 MiB (PARSE_MAX_MEMORY)"),
        ((hostile.die, signal.SIGKILL), "memory limit of 1024 MiB (PARSE_MAX_MEMORY)"),
        ((hostile.die, signal.SIGSEGV), "crashed (exit code -11)"),
    ],
    ids=["MemoryError", "killed", "segfault"],
)
async def test_a_call_out_of_memory_or_crashed_fails_and_the_pool_goes_on(
    processes: ExtractionPool, call: tuple[Callable[..., object], int], fragment: str
) -> None:
    with pytest.raises(ExtractionLimit) as caught:
        await processes.run("'big.csv'", *call)
    assert fragment in str(caught.value) and "'big.csv'" in str(caught.value)
    assert await processes.run("next", hostile.allocate, 16) == 16 << 20


def test_extraction_runs_in_processes_unless_told_otherwise(settings: Settings) -> None:
    defaults = settings.model_copy(update={"parse_processes": None})
    assert Settings.model_fields["parse_processes"].default is None
    pipeline = IngestionPipeline(
        settings=defaults, db=cast(Any, None), ollama=cast(Any, None), metrics=cast(Any, None)
    )
    assert pipeline._extraction.processes >= 1
    pipeline.close()


def _peak_rss() -> int:
    """This process's peak resident set, bytes (the server runs in the test's process)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def _poll(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            assert client.get(f"{url}/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)


async def test_hostile_uploads_never_stall_the_server(inbox: Inbox, settings: Settings) -> None:
    """The worker runs in the server's process (WORKER_IN_PROCESS) with real extraction
    processes; a thread polls /healthz the whole time."""
    limited = settings.model_copy(
        update={"parse_processes": 1, "parse_timeout": 4.0, "parse_max_memory": 1 << 30}
    )
    stop, latencies = threading.Event(), list[float]()
    async with serve(limited) as url, httpx.AsyncClient(timeout=60) as http:
        gql = GraphQLClient(http, url)
        token = await sign_up(gql, inbox, "ada@example.com")
        poller = threading.Thread(target=_poll, args=(url, stop, latencies), daemon=True)
        poller.start()
        try:
            start = time.perf_counter()
            bait = await gql.upload("bait.txt", hostile.backtracking_bait(40), token=token)
            assert time.perf_counter() - start < 10
            assert bait.json()["data"]["uploadDocument"]["status"] == "READY"

            # Refused at upload from the central directory alone: nothing stored.
            body = await upload_error(gql, "bomb.docx", hostile.zip_bomb("docx"), token)
            assert_error(body, "BAD_USER_INPUT", "bomb.docx", "ZIP_MAX_RATIO")

            # Parsed in the extraction process, where a limit fails this document only.
            peak = _peak_rss()
            slow = await upload_ok(gql, "many.docx", hostile.many_paragraphs_docx(), token)
            grown = _peak_rss() - peak  # python-docx took +480 MiB parsing it here
            big = await upload_ok(gql, "blank.txt", b"ab\n\n" * (8 << 20), token)
            after = await upload_ok(gql, "after.pdf", make_pdf(["Terns migrate far."]), token)
            found = [
                (await gql.data(DOCUMENT, {"id": d["id"]}, token=token))["document"]
                for d in (slow, big, after)
            ]
        finally:
            stop.set()
            await asyncio.to_thread(poller.join)
    assert found[0]["status"] == "FAILED" and "(PARSE_TIMEOUT)" in found[0]["error"], found
    assert found[1]["status"] == "FAILED" and "(PARSE_MAX_MEMORY)" in found[1]["error"], found
    assert found[2]["status"] == "READY" and found[2]["pageCount"] == 1, found
    assert len(latencies) > 20 and max(latencies) < 1, max(latencies)
    assert grown < 50 * 2**20, grown / 2**20
    async with connect(limited) as conn:
        names = await conn.fetch("SELECT filename FROM document ORDER BY filename")
    assert "bomb.docx" not in [row["filename"] for row in names]


def test_a_sheet_of_thousands_of_columns_gives_bounded_chunks(tmp_path: Path) -> None:
    """Its rows do not fit a chunk beside their header: they are cut as prose, every chunk
    within the size, every cell kept."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([f"h{n}" for n in range(3000)])
    sheet.append([f"v{n}" for n in range(3000)])
    path = tmp_path / "wide.xlsx"
    book.save(path)
    inspection = parsing.inspect_file(path, "wide.xlsx", max_pages=10)
    texts = parsing.extract_units(path, inspection.media_type, 0, inspection.unit_count).texts
    chunks = chunking.chunk_pages(texts, size=400, overlap=60)
    assert all(len(chunk.text) <= 400 for chunk in chunks)
    assert "v2999" in chunks[-1].text and "h0" in chunks[0].text
