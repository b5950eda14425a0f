"""Background ingestion through the API: QUEUED at once, live events, every format, limits,
the process pool, reindexing that swaps a document's chunks at once."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymupdf
import pytest

from rag_gql.config import Settings
from rag_gql.ingestion.queue import INGEST_TASK
from rag_gql.resources import open_services
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import StandinState, embed_text
from tests.support.pdfs import long_page, make_image_only_pdf, make_pdf
from tests.support.serving import environment, serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error, upload_error, upload_ok

pymupdf_open: Any = pymupdf.open  # no type hints
FORMATS = Path(__file__).parent / "data" / "formats"
EVENTS = (
    "subscription($id: ID) { documentEvents(documentId: $id) "
    "{ documentId status pagesTotal pagesDone chunksDone chunkCount error deleted } }"
)
DOCUMENT_ERROR = "query($id: ID!) { document(id: $id) { error } }"
SEARCH = (
    "query($q: String!, $k: Int) { search(query: $q, k: $k, mode: KEYWORD) "
    "{ text page document { filename unit } } }"
)
REINDEX = "mutation($id: ID!) { reindexDocument(id: $id) { id status chunkCount } }"


async def events_of(
    gql: GraphQLClient,
    token: str,
    document_id: str | None,
    *,
    until: Callable[[Json], bool] | None = None,
) -> list[Json]:
    """Subscribes to documentEvents; returns the events until the server completes (or, with
    `until`, up to the first event it accepts)."""
    got: list[Json] = []
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        payload = {"query": EVENTS, "variables": {"id": document_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        async with asyncio.timeout(30):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "complete":
                    return got
                assert frame["type"] == "next", frame
                assert not frame["payload"].get("errors"), frame
                got.append(frame["payload"]["data"]["documentEvents"])
                if until is not None and until(got[-1]):
                    return got


async def test_upload_returns_queued_and_events_follow_it_to_ready(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    pages = [long_page(f"topic{n}", 12) for n in range(40)]  # page batches of 32 and 8
    ollama.delay = 0.05  # every embedding request takes a moment: the job is seen running
    response = await gql.upload("manual.pdf", make_pdf(pages), token=token, wait=False)
    document = response.json()["data"]["uploadDocument"]
    assert document["status"] == "QUEUED" and document["chunkCount"] == 0
    assert document["pageCount"] == 0, "counted by the worker, not at upload"

    events = await events_of(gql, token, document["id"])

    statuses = [e["status"] for e in events]
    assert statuses[-1] == "READY", events
    assert "EMBEDDING" in statuses, statuses
    progress = [e["pagesDone"] for e in events if e["status"] == "EMBEDDING"]
    assert progress == sorted(progress) and progress[0] == 32, progress
    assert all(e["pagesTotal"] == 40 for e in events if e["status"] in ("EMBEDDING", "READY"))
    last = events[-1]
    assert last["pagesDone"] == 40 and last["chunkCount"] == last["chunksDone"] > 40
    # Subscribing to a finished document gives its state and completes.
    assert await events_of(gql, token, document["id"]) == [last]


@pytest.mark.parametrize(
    ("name", "phrase", "page", "unit"),
    [
        ("sample.docx", "velvet compass", 2, "SECTION"),
        ("sample.epub", "cobalt harbour", 2, "PAGE"),
        ("sample.csv", "marble falcon", 2, "ROWS"),
        ("sample.xlsx", "coral meridian", 2, "ROWS"),
        ("sample.pptx", "indigo quarry", 2, "PAGE"),
        ("sample.md", "silver thistle", 2, "SECTION"),
        ("sample.html", "amber glacier", 2, "SECTION"),
        ("sample.xps", "saffron lantern", 2, "PAGE"),
    ],
)
async def test_each_format_is_searchable_at_its_position(
    gql: GraphQLClient, inbox: Inbox, name: str, phrase: str, page: int, unit: str
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    response = await gql.upload(name, (FORMATS / name).read_bytes(), token=token)
    document = response.json()["data"]["uploadDocument"]
    assert document["status"] == "READY", document

    hits = (await gql.data(SEARCH, {"q": phrase, "k": 3}, token=token))["search"]

    assert hits, f"{phrase!r} not found in {name}"
    assert phrase in hits[0]["text"].lower() or phrase in hits[0]["text"]
    assert (hits[0]["page"], hits[0]["document"]["unit"]) == (page, unit)


async def test_with_ocr_off_a_scan_and_a_comic_fail_with_a_reason(
    inbox: Inbox, settings: Settings
) -> None:
    async with serve_client(settings.model_copy(update={"ocr": "off"})) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        fields = "id status error chunkCount ocrPages"
        for name, reason in (("bad-scan.pdf", "no text layer"), ("sample.cbz", "only images")):
            response = await gql.upload(
                name, (FORMATS / name).read_bytes(), token=token, fields=fields
            )
            document = response.json()["data"]["uploadDocument"]
            assert document["status"] == "FAILED", document
            assert reason in document["error"] and name in document["error"], document
            assert "OCR=off" in document["error"], document
            assert (document["chunkCount"], document["ocrPages"]) == (0, 0)


async def test_limits_are_enforced_with_the_limit_in_the_message(
    inbox: Inbox, settings: Settings
) -> None:
    limited = settings.model_copy(update={"max_upload_bytes": 4096, "max_pages": 2})
    async with serve_client(limited) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        body = await upload_error(gql, "big.txt", b"word " * 2000, token)
        assert_error(body, "BAD_USER_INPUT", "big.txt", "4096 bytes")
        # Pages are counted by parsing, in the worker's extraction processes: FAILED.
        three = await upload_ok(gql, "three.pdf", make_pdf(["a", "b", "c"]), token)
        assert three["status"] == "FAILED"
        error = await gql.data(DOCUMENT_ERROR, {"id": three["id"]}, token=token)
        assert error["document"]["error"] == "'three.pdf' has 3 pages; the limit is 2"
        # A body declared far larger than the limit is refused before it is read.
        huge = await gql.upload("huge.txt", b"x" * 200_000, token=token)
        assert huge.status_code == 413
        assert_error(huge.json(), "BAD_USER_INPUT", "limit of 4096 bytes")
        async with connect(limited) as conn:
            assert await conn.fetchval("SELECT count(*) FROM document") == 1  # three.pdf


async def test_text_extraction_in_a_process_pool(inbox: Inbox, settings: Settings) -> None:
    pooled = settings.model_copy(update={"parse_processes": 2, "ingest_page_batch": 2})
    async with serve_client(pooled, timeout=60) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        pages = [f"Page {n} is about the {word} fjord." for n, word in enumerate("abcdefg", 1)]
        response = await gql.upload("fjords.pdf", make_pdf(pages), token=token)
        document = response.json()["data"]["uploadDocument"]
        assert document["status"] == "READY" and document["chunkCount"] == 7
        hits = (await gql.data(SEARCH, {"q": "the e fjord", "k": 1}, token=token))["search"]
        assert hits[0]["page"] == 5


async def test_reindex_swaps_all_chunks_at_once(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    pages = [long_page(f"theme{n}", 12) for n in range(20)]
    response = await gql.upload("atlas.pdf", make_pdf(pages), token=token)
    document = response.json()["data"]["uploadDocument"]
    chunks = document["chunkCount"]
    async with connect(settings) as conn:
        old_ids = {r["id"] for r in await conn.fetch("SELECT id FROM chunk")}
        assert len(old_ids) == chunks

        ollama.delay = 0.05
        queued = (await gql.data(REINDEX, {"id": document["id"]}, token=token))["reindexDocument"]
        assert queued == {"id": document["id"], "status": "QUEUED", "chunkCount": chunks}
        seen_while_running: set[int] = set()
        while True:
            # One statement: one snapshot of both.
            row = await conn.fetchrow(
                "SELECT (SELECT status FROM document) AS status, array(SELECT id FROM chunk) AS ids"
            )
            assert row is not None
            status, ids = row["status"], set(row["ids"])
            if status == "READY":
                break
            seen_while_running.add(len(ids))
            # Readers see the old set, whole, until the new one replaces it.
            assert ids == old_ids, status
            await asyncio.sleep(0.02)
        new_ids = {r["id"] for r in await conn.fetch("SELECT id FROM chunk")}
        ordinals = [r["ordinal"] for r in await conn.fetch("SELECT ordinal FROM chunk")]
    assert seen_while_running == {chunks}
    assert len(new_ids) == chunks and not new_ids & old_ids
    assert sorted(ordinals) == list(range(chunks))


async def test_bulk_ingest_command(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.pdf").write_bytes(make_pdf(["Kestrels hover over the dunes."]))
    (folder / "sub" / "b.md").write_bytes((FORMATS / "sample.md").read_bytes())
    (folder / "sub" / "copy-of-a.pdf").write_bytes((folder / "a.pdf").read_bytes())
    (folder / "broken.pdf").write_bytes((FORMATS / "bad-truncated.pdf").read_bytes())
    (folder / "scan.pdf").write_bytes(make_image_only_pdf())  # a drawing: OCR finds no text
    (folder / ".hidden.txt").write_text("skipped")
    env = environment(settings, PARSE_PROCESSES="0")
    command = [sys.executable, "-m", "rag_gql.cli", "ingest", str(folder)]
    command += ["--workspace", "library", "--collection", "field notes"]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    out = stdout.decode()
    assert process.returncode == 1, (out, stderr.decode())  # two files failed
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:4]}
    assert lines == {"ingested": "2", "duplicates": "1", "failed": "2"}, out
    assert "broken.pdf: 'broken.pdf' is not a readable PDF" in out, out
    assert "scan.pdf: 'scan.pdf' has no text layer" in out, out
    assert ".hidden" not in out
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT d.filename, d.status, c.name FROM document d "
            "JOIN collection c ON c.id = d.collection_id JOIN workspace w ON w.id = d.workspace_id "
            "WHERE w.name = 'library' ORDER BY d.filename"
        )
    assert [(r["filename"], r["status"], r["name"]) for r in rows] == [
        ("a.pdf", "READY", "field notes"),
        ("b.md", "READY", "field notes"),
        ("broken.pdf", "FAILED", "field notes"),  # found out by parsing, in the worker
        ("scan.pdf", "FAILED", "field notes"),
    ]


async def test_bulk_ingest_sets_metadata_from_arguments_and_sidecars(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf(["Ospreys dive for fish."]))
    (folder / "a.pdf.meta.json").write_text(json.dumps({"team": "birds", "year": 2020}))
    (folder / "b.pdf").write_bytes(make_pdf(["Herons wait in the shallows."]))
    (folder / "c.pdf").write_bytes(make_pdf(["Gulls follow the ferry."]))
    (folder / "c.pdf.meta.json").write_text(json.dumps({"nested": {"no": 1}}))
    (folder / "orphan.meta.json").write_text("{}")  # no file `orphan` beside it: a file
    env = environment(settings, PARSE_PROCESSES="0")
    command = [sys.executable, "-m", "rag_gql.cli", "ingest", str(folder), "--workspace", "meta"]
    command += ["--metadata", "source=archive", "--metadata", "year=2024"]
    command += ["--metadata", "tag=a", "--metadata", "tag=b"]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    out = stdout.decode()
    assert process.returncode == 1, (out, stderr.decode())  # c.pdf: its sidecar is bad
    assert "c.pdf: metadata.nested is nested" in out, out
    assert "a.pdf.meta.json" not in out, "a sidecar is not ingested"
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT d.filename, d.metadata::text FROM document d "
            "JOIN workspace w ON w.id = d.workspace_id WHERE w.name = 'meta' ORDER BY 1"
        )
    common = {"source": "archive", "year": 2024, "tag": ["a", "b"]}
    stored = {r[0]: json.loads(r[1]) for r in rows}
    assert stored == {
        "a.pdf": {**common, "team": "birds", "year": 2020},  # the sidecar's keys win
        "b.pdf": common,
        "orphan.meta.json": common,  # beside no file of its name: an ordinary file
    }

    bad = [sys.executable, "-m", "rag_gql.cli", "ingest", str(folder), "--metadata", "novalue"]
    process = await asyncio.create_subprocess_exec(
        *bad, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "expected key=value" in stderr.decode()


async def test_reindex_all_and_documents_without_a_stored_file(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    first = (await gql.upload("one.pdf", make_pdf(["Puffins nest on cliffs."]), token=token)).json()
    second = (await gql.upload("two.pdf", make_pdf(["Gannets dive for fish."]), token=token)).json()
    ids = [d["data"]["uploadDocument"]["id"] for d in (first, second)]
    async with connect(settings) as conn:
        # As if uploaded before files were stored: only its chunks are left to re-embed.
        await conn.execute("DELETE FROM document_file_part WHERE document_id = $1", ids[1])
        before = {r["id"] for r in await conn.fetch("SELECT id FROM chunk")}
    services_settings = settings.model_copy(update={"worker_in_process": False})
    async with open_services(services_settings, check_upstream=False) as services:
        assert await services.ingestion.reindex_all() == 2
    ollama.embed_requests = 0
    for document_id in ids:
        document = await gql.wait_for_document(document_id, token=token)
        assert document["status"] == "READY", document
    assert ollama.embed_requests == 2
    async with connect(settings) as conn:
        after = {r["id"] for r in await conn.fetch("SELECT id FROM chunk")}
        kept = await conn.fetchval(
            "SELECT count(*) FROM chunk WHERE document_id = $1", uuid.UUID(ids[1])
        )
    assert kept == 1 and len(after) == 2
    assert len(before & after) == 1, "re-embedded in place, not rewritten"
    hits = (await gql.data(SEARCH, {"q": "gannets", "k": 1}, token=token))["search"]
    assert hits[0]["document"]["filename"] == "two.pdf"


async def test_a_job_cut_short_by_shutdown_is_queued_again(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    quick = settings.model_copy(update={"shutdown_grace": 0.2, "ingest_page_batch": 2})
    pages = [long_page(f"dune{n}", 10) for n in range(20)]
    ollama.delay = 0.1
    async with serve_client(quick) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        response = await gql.upload("dunes.pdf", make_pdf(pages), token=token, wait=False)
        document_id = response.json()["data"]["uploadDocument"]["id"]
        async with connect(settings) as conn:
            while await conn.fetchval("SELECT pages_done FROM document") < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    # The server stopped mid-job: nothing half-written, the document queued again.
    async with connect(settings) as conn:
        row = await conn.fetchrow("SELECT status, error FROM document")
        assert row is not None
        assert row["status"] == "QUEUED" and "interrupted" in row["error"], dict(row)
        assert await conn.fetchval("SELECT count(*) FROM chunk") == 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND task_name = $1",
                INGEST_TASK,
            )
            == 1
        )
    ollama.delay = 0.0
    async with serve_client(quick) as gql:
        document = await gql.wait_for_document(document_id, token=token)  # the same JWT secret
        assert document["status"] == "READY" and document["error"] is None


async def test_deleting_a_document_ends_its_events(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    """A document deleted while it waits for a retry: its subscribers get one last event,
    `deleted: true` with its last status, and a subscription to it alone completes."""
    settings = settings.model_copy(update={"ingest_retry_base_wait": 60})
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        ollama.fail_status = 503
        response = await gql.upload(
            "lantern.pdf", make_pdf(["Trim the lantern wick."]), token=token, wait=False
        )
        document_id = response.json()["data"]["uploadDocument"]["id"]
        query = "query($id: ID!) { document(id: $id) { status error } }"
        async with asyncio.timeout(30):
            while True:  # the first attempt fails: QUEUED again, its retry a minute away
                doc = (await gql.data(query, {"id": document_id}, token=token))["document"]
                if doc["error"] and doc["error"].startswith("will retry"):
                    break
                await asyncio.sleep(0.1)

        one = asyncio.create_task(events_of(gql, token, document_id))
        everything = asyncio.create_task(
            events_of(gql, token, None, until=lambda event: event["deleted"])
        )
        await asyncio.sleep(1.0)  # both subscribed
        deleted = await gql.data(
            "mutation($id: ID!) { deleteDocument(id: $id) }", {"id": document_id}, token=token
        )
        assert deleted == {"deleteDocument": True}
        events = await one
        assert [(e["status"], e["deleted"]) for e in events] == [
            ("QUEUED", False),
            ("QUEUED", True),
        ], events
        assert events[-1]["documentId"] == document_id
        # The workspace's stream saw it too (and goes on).
        assert (await everything)[-1]["documentId"] == document_id


HANDBOOK_BODY = "\n\n".join(
    f"Paragraph {i} says the glaze ran thin at cone {i} in the east kiln." for i in range(60)
)
HANDBOOK = f"# Kiln handbook\n\n## Zygomorphic crawling\n\n{HANDBOOK_BODY}\n".encode()
HANDBOOK_CONTEXT = "handbook > Kiln handbook > Zygomorphic crawling"


SEARCH_SNIPPETS = "query($q: String!) { search(query: $q, k: 10, mode: KEYWORD) { text snippet } }"


async def _document_frequency(settings: Settings, lexeme: str) -> int:
    """How many chunks hold `lexeme`, by the BM25 statistics keyword ranking reads."""
    async with connect(settings) as conn:
        found = await conn.fetchval(
            "SELECT coalesce(sum(chunks), 0) FROM bm25_delta WHERE lexeme = $1", lexeme
        )
    return int(found)


async def _stored_chunks(settings: Settings) -> list[tuple[str, str, bool]]:
    """(text, context, whether tsv matches 'zygomorphic') of every chunk, in order."""
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT text, context, tsv @@ to_tsquery('english', 'zygomorphic') AS hit"
            " FROM chunk ORDER BY ordinal"
        )
    return [(str(r["text"]), str(r["context"]), bool(r["hit"])) for r in rows]


async def test_a_chunk_is_embedded_and_found_with_its_heading_path_but_shows_its_text(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    embedded: list[str] = []

    def record(texts: list[str]) -> list[list[float]]:
        embedded.extend(texts)
        return [embed_text(text, ollama.dim) for text in texts]

    ollama.embedder = record
    on = settings.model_copy(update={"context_prefix": "on"})
    async with serve_client(on) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        document = (await gql.upload("handbook.md", HANDBOOK, token=token)).json()
        assert document["data"]["uploadDocument"]["status"] == "READY", document
        hits = (await gql.data(SEARCH, {"q": "zygomorphic", "k": 10}, token=token))["search"]

    chunks = await _stored_chunks(on)
    assert len(chunks) > 2
    # The stored text is the passage; the context is apart, and in the keyword text.
    assert {context for _, context, _ in chunks} == {HANDBOOK_CONTEXT}
    assert all(hit for *_, hit in chunks)
    assert not any(text.startswith("handbook") for text, _, _ in chunks)
    probes = ["dimension probe"]  # the start-up check of EMBED_DIM
    assert [text for text in embedded if text not in probes] == [
        f"{HANDBOOK_CONTEXT}\n\n{text}" for text, _, _ in chunks
    ]
    # A heading word finds the chunks under it, those without the word too, showing the text.
    # (Adjacent chunks come back merged into one hit.)
    assert any("Paragraph 59 " in hit["text"] for hit in hits), hits
    assert not any(hit["text"].startswith("handbook") for hit in hits)


@pytest.mark.parametrize("mode", ["keyword", "off"])
async def test_context_prefix_keyword_leaves_it_out_of_the_embedding_and_off_everywhere(
    inbox: Inbox, ollama: StandinState, settings: Settings, mode: str
) -> None:
    embedded: list[str] = []

    def record(texts: list[str]) -> list[list[float]]:
        embedded.extend(texts)
        return [embed_text(text, ollama.dim) for text in texts]

    ollama.embedder = record
    changed = settings.model_copy(update={"context_prefix": mode})
    async with serve_client(changed) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        document = (await gql.upload("handbook.md", HANDBOOK, token=token)).json()
        assert document["data"]["uploadDocument"]["status"] == "READY", document
        hits = (await gql.data(SEARCH, {"q": "zygomorphic", "k": 10}, token=token))["search"]
        snippets = (await gql.data(SEARCH_SNIPPETS, {"q": "zygomorphic"}, token=token))["search"]

    chunks = await _stored_chunks(changed)
    probes = ["dimension probe"]  # the start-up check of EMBED_DIM
    assert [text for text in embedded if text not in probes] == [text for text, _, _ in chunks]
    under = any("Paragraph 59 " in hit["text"] for hit in hits)
    if mode == "keyword":
        assert {context for _, context, _ in chunks} == {HANDBOOK_CONTEXT}
        assert all(hit for *_, hit in chunks) and under
        # The BM25 statistics count the context's words, as the ranking reads them (tsv).
        assert await _document_frequency(changed, "zygomorph") == len(chunks)
        # What users see, the text and its highlighted snippet, is the passage alone.
        assert snippets and not any(
            HANDBOOK_CONTEXT in hit["text"]
            or HANDBOOK_CONTEXT in hit["snippet"]
            or "handbook >" in hit["snippet"]
            for hit in snippets
        )
    else:
        assert {context for _, context, _ in chunks} == {""}
        assert [hit for *_, hit in chunks].count(True) == 1
        assert await _document_frequency(changed, "zygomorph") == 1
        assert hits and not under


async def test_a_pdf_chunk_s_context_is_the_file_s_own_title_and_its_outline_path(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    # The title comes from the file's properties (services/properties.py), the one reader of
    # it, stored on the document too; the path from the outline entry above the chunk.
    doc: Any = pymupdf_open(stream=make_pdf(["Intro words.", "Usage\n\nOptions words here."]))
    doc.set_toc([[1, "Intro", 1], [1, "Usage", 2], [2, "Options", 2]])
    doc.set_metadata({"title": "The  kiln manual"})
    token = await sign_up(gql, inbox, "ada@example.com")
    document = await upload_ok(gql, "manual.pdf", doc.tobytes(), token)
    assert (await gql.wait_for_document(document["id"], token=token))["status"] == "READY"
    async with connect(settings) as conn:
        rows = await conn.fetch("SELECT page, text, context FROM chunk ORDER BY ordinal")
        title = await conn.fetchval("SELECT title FROM document")
    assert title == "The kiln manual"
    assert [(r["page"], r["context"]) for r in rows] == [
        (1, "The kiln manual > Intro"),
        (2, "The kiln manual > Usage > Options"),
    ]
    assert not any(str(r["text"]).startswith("The kiln manual") for r in rows)
