"""Documents through the API: upload (multipart, CSRF preflight), bad input, Ollama failures,
the Relay listing, one document, deletion. What was stored is checked in SQL, from outside."""

from __future__ import annotations

import base64
import gc
import hashlib
import itertools
import json
import math
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pymupdf

from rag_gql.config import Settings
from rag_gql.services.chunking import normalize_page
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.ollama_standin import StandinState, embed_text
from tests.support.pdfs import long_page, make_encrypted_pdf, make_image_only_pdf, make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect, stored_counts
from tests.support.uploads import assert_error, upload_error, upload_ok

FIELDS = "id filename sha256 pageCount chunkCount status duplicate createdAt"
DOCUMENT = f"query($id: ID!) {{ document(id: $id) {{ {FIELDS} }} }}"
DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
DOCUMENTS = (
    "query($first: Int, $after: String) { documents(first: $first, after: $after) "
    f"{{ edges {{ cursor node {{ {FIELDS} }} }} "
    "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"
)

_open: Any = pymupdf.open


def page_texts(pdf: bytes) -> list[str]:
    """Each page's text layer, normalized as the chunk offsets are defined."""
    with _open(stream=pdf, filetype="pdf") as doc:
        return [normalize_page(page.get_text("text", sort=False)) for page in doc]


def raw_cursor(text: str) -> str:
    """A cursor made by hand: URL-safe base64 of `text` (lone surrogates become raw bytes)."""
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogateescape")).decode()


async def chunk_counts(settings: Settings) -> dict[str, int]:
    """Chunks per document id, as stored."""
    async with connect(settings) as conn:
        rows = await conn.fetch("SELECT document_id, count(*) FROM chunk GROUP BY document_id")
    return {str(row[0]): row[1] for row in rows}


def squash(text: str) -> str:
    return " ".join(text.split())


async def test_upload_stores_pages_chunks_and_offsets(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    pages = [
        "Short first page about the pgvector extension.",
        long_page("lighthouses", 30),
        "Third page: sourdough bread needs a lively starter.",
    ]
    pdf = make_pdf(pages)

    doc = await upload_ok(gql, "report.pdf", pdf, token)

    assert doc["filename"] == "report.pdf"
    assert doc["sha256"] == hashlib.sha256(pdf).hexdigest()
    assert doc["pageCount"] == 3
    assert doc["status"] == "READY"
    assert doc["duplicate"] is False
    assert datetime.fromisoformat(doc["createdAt"]).tzinfo is not None
    assert uuid.UUID(doc["id"])
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT ordinal, page, char_start, char_end, text, embedding::text AS embedding "
            "FROM chunk WHERE document_id = $1 ORDER BY ordinal",
            uuid.UUID(doc["id"]),
        )
        stored = await conn.fetchrow(
            "SELECT sha256, page_count, chunk_count, size_bytes, media_type FROM document"
        )
    assert stored is not None
    assert dict(stored) == {
        "sha256": doc["sha256"],
        "page_count": 3,
        "chunk_count": doc["chunkCount"],
        "size_bytes": len(pdf),
        "media_type": "application/pdf",
    }
    assert len(rows) == doc["chunkCount"]
    assert [r["ordinal"] for r in rows] == list(range(len(rows)))
    assert [r["page"] for r in rows] == sorted(r["page"] for r in rows)

    normalized = page_texts(pdf)
    by_page = {p: [r for r in rows if r["page"] == p] for p in (1, 2, 3)}
    assert len(by_page[1]) == 1 and len(by_page[3]) == 1
    assert len(by_page[2]) >= 4, "the long page is cut into several chunks"
    for page, chunks in by_page.items():
        text = normalized[page - 1]
        for chunk in chunks:
            assert chunk["text"] == text[chunk["char_start"] : chunk["char_end"]]
            assert 0 < len(chunk["text"]) <= settings.chunk_size
            # The right page: the chunk's words are that page's words, in order.
            assert squash(chunk["text"]) in squash(pages[page - 1])
        assert chunks[0]["char_start"] == 0
        assert chunks[-1]["char_end"] == len(text), "the page is covered to its end"
        for prev, nxt in itertools.pairwise(chunks):
            overlap = prev["char_end"] - nxt["char_start"]
            assert nxt["char_start"] > prev["char_start"]
            assert 0 < overlap <= settings.chunk_overlap, (prev, nxt)
            shared = text[nxt["char_start"] : prev["char_end"]]
            assert prev["text"].endswith(shared) and nxt["text"].startswith(shared)

    # The stored vector is the embedding of the chunk's own text.
    for row in (rows[0], rows[-1]):
        vector = json.loads(row["embedding"])
        expected = embed_text(row["text"], len(vector))
        assert math.dist(vector, expected) < 1e-4

    # The same bytes again: the same document, flagged, and nothing embedded.
    embeds_before = ollama.embed_requests
    again = await upload_ok(gql, "copy-of-report.pdf", pdf, token)
    assert again["duplicate"] is True
    assert again["id"] == doc["id"]
    assert again["filename"] == "report.pdf"
    assert {k: again[k] for k in ("sha256", "chunkCount", "createdAt")} == {
        k: doc[k] for k in ("sha256", "chunkCount", "createdAt")
    }
    assert ollama.embed_requests == embeds_before
    assert await stored_counts(settings) == (1, len(rows))


async def test_multipart_needs_a_preflight_header(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = make_pdf(["A page about CSRF protection for uploads."])

    blocked = await gql.upload("csrf.pdf", pdf, token=token, preflight=False)
    assert blocked.status_code == 400
    assert "Cross-Site Request Forgery" in blocked.text
    assert "Apollo-Require-Preflight" in blocked.text
    assert "Traceback" not in blocked.text
    assert await stored_counts(settings) == (0, 0)

    operations = {
        "query": "mutation Upload($file: Upload!) { uploadDocument(file: $file) { id duplicate } }",
        "variables": {"file": None},
    }
    response = await gql.http.post(
        f"{gql.base_url}/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("csrf.pdf", pdf, "application/pdf")},
        headers={"Authorization": f"Bearer {token}", "X-Apollo-Operation-Name": "Upload"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    assert body["data"]["uploadDocument"]["duplicate"] is False
    await gql.wait_for_document(body["data"]["uploadDocument"]["id"], token=token)
    documents, chunks = await stored_counts(settings)
    assert documents == 1 and chunks >= 1


DOCUMENT_ERROR = "query($id: ID!) { document(id: $id) { status error } }"
REINDEX = "mutation($id: ID!) { reindexDocument(id: $id) { id status } }"


async def test_anonymous_upload_is_refused(gql: GraphQLClient, settings: Settings) -> None:
    response = await gql.upload("anon.pdf", make_pdf(["Anonymous words."]), token=None)
    assert_error(response.json(), "UNAUTHENTICATED", "Authorization")
    assert await stored_counts(settings) == (0, 0)
    gc.collect()  # an upload file left open would warn here, inside this test


async def test_bad_files_are_rejected_and_nothing_is_stored(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    good = make_pdf(["Page one has words.", "Page two has more words."])
    # Refused at upload, before anything is stored or queued: what is cheap to tell.
    cases: Sequence[tuple[str, bytes, tuple[str, ...]]] = [
        ("empty.pdf", b"", ("empty.pdf", "empty")),
        ("photo.pdf", b"\x89PNG\r\n\x1a\n" + bytes(200), ("photo.pdf", "not supported")),
    ]
    for filename, content, fragments in cases:
        body = await upload_error(gql, filename, content, token)
        assert_error(body, "BAD_USER_INPUT", *fragments)
        assert await stored_counts(settings) == (0, 0), filename
    # What only parsing tells is found out in the worker's extraction processes: FAILED.
    failed: Sequence[tuple[str, bytes, tuple[str, ...]]] = [
        ("garbled.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 8, ("garbled.pdf", "corrupt")),
        ("half.pdf", good[: len(good) // 2], ("half.pdf", "corrupt or truncated")),
        ("cut.pdf", good[: len(good) * 9 // 10], ("cut.pdf", "corrupt or truncated")),
        ("locked.pdf", make_encrypted_pdf(), ("locked.pdf", "encrypted")),
    ]
    for count, (filename, content, fragments) in enumerate(failed, 1):
        document = await upload_ok(gql, filename, content, token)
        assert document["status"] == "FAILED", filename
        found = await gql.data(
            "query($id: ID!) { document(id: $id) { error } }", {"id": document["id"]}, token=token
        )
        for fragment in fragments:
            assert fragment in found["document"]["error"], found
        assert await stored_counts(settings) == (count, 0), filename
    assert ollama.embed_requests == 0, "nothing was embedded"

    # A scan is only found out by extracting its text: FAILED, with the reason, no chunks.
    scan = await upload_ok(gql, "scan.pdf", make_image_only_pdf(), token)
    assert scan["status"] == "FAILED"
    assert scan["chunkCount"] == 0
    error = await gql.data(
        "query($id: ID!) { document(id: $id) { error } }", {"id": scan["id"]}, token=token
    )
    assert "no text layer" in error["document"]["error"]
    assert await stored_counts(settings) == (len(failed) + 1, 0)

    # The type comes from the content, not the name: text named .pdf is ingested as text.
    text = await upload_ok(gql, "notes.pdf", b"plain text wearing a .pdf name\n", token)
    assert text["status"] == "READY"
    # The account still works: a good file goes in.
    doc = await upload_ok(gql, "good.pdf", good, token)
    assert doc["chunkCount"] == 2


async def test_ollama_failures_leave_nothing_behind(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    # Two texts per /api/embed request, so a several-chunk document needs several requests;
    # two runs of a job (one retry, 1 s later) before FAILED.
    small_batches = settings.model_copy(update={"embed_batch_size": 2})
    pdf = make_pdf([long_page("glaciers", 20)])  # about 1400 characters: 4+ chunks
    async with serve_client(small_batches) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        ollama.embed_requests = 0  # the server's startup probe embedded once

        # Ollama answers every request with an error: retried once, then FAILED with its words.
        ollama.fail_status = 503
        ollama.fail_message = "model is loading"
        doc = await upload_ok(gql, "glaciers.pdf", pdf, token)
        assert doc["status"] == "FAILED" and doc["chunkCount"] == 0
        error = (await gql.data(DOCUMENT_ERROR, {"id": doc["id"]}, token=token))["document"]
        assert "model is loading" in error["error"] and "503" in error["error"], error
        assert "2 times" in error["error"], error
        assert ollama.embed_requests == 2, "one request per run, two runs"
        assert await stored_counts(settings) == (1, 0)

        # Ollama is back: reindexing the same document makes it READY.
        ollama.fail_status = None
        ollama.embed_requests = 0
        doc = (await gql.data(REINDEX, {"id": doc["id"]}, token=token))["reindexDocument"]
        assert doc["status"] == "QUEUED"
        doc = await gql.wait_for_document(doc["id"], token=token)
        assert doc["status"] == "READY" and doc["chunkCount"] >= 4
        chunks = doc["chunkCount"]
        assert ollama.embed_requests == math.ceil(chunks / 2)

        # The first batch is embedded, the second fails once: the retry writes every chunk
        # exactly once, and no search ever saw a part of the new set.
        ollama.embed_requests = ollama.embed_inputs = 0
        ollama.fail_after = 1  # requests after the first fail...
        ollama.fail_times = 1  # ...once
        ollama.fail_status = 500
        ollama.fail_message = "out of memory"
        await gql.data(REINDEX, {"id": doc["id"]}, token=token)
        doc = await gql.wait_for_document(doc["id"], token=token)
        assert doc["status"] == "READY" and doc["chunkCount"] == chunks
        assert await stored_counts(settings) == (1, chunks)
        assert ollama.embed_requests == 2 + math.ceil(chunks / 2)


async def test_list_read_and_delete_documents(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    empty = await gql.data(DOCUMENTS, {"first": 10}, token=token)
    assert empty["documents"] == {
        "edges": [],
        "pageInfo": {
            "hasNextPage": False,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
    }
    pdfs = [make_pdf([f"Document {i} is about topic{i}.", f"Its page two, {i}."]) for i in range(5)]
    uploaded = [await upload_ok(gql, f"doc{i}.pdf", pdf, token) for i, pdf in enumerate(pdfs)]
    newest_first = [d["id"] for d in reversed(uploaded)]

    # documents(first, after): walk the pages.
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        data = await gql.data(DOCUMENTS, {"first": 2, "after": after}, token=token)
        connection = data["documents"]
        edges = connection["edges"]
        pages += 1
        assert 1 <= len(edges) <= 2
        seen += [edge["node"]["id"] for edge in edges]
        assert connection["pageInfo"]["startCursor"] == edges[0]["cursor"]
        assert connection["pageInfo"]["endCursor"] == edges[-1]["cursor"]
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == newest_first, "newest first, each once"

    everything = (await gql.data(DOCUMENTS, {"first": 100}, token=token))["documents"]
    assert [e["node"]["id"] for e in everything["edges"]] == newest_first
    assert everything["pageInfo"]["hasNextPage"] is False
    created = [datetime.fromisoformat(e["node"]["createdAt"]) for e in everything["edges"]]
    assert created == sorted(created, reverse=True)
    assert everything["edges"][0]["node"] == uploaded[-1]
    # Resuming from any edge's cursor gives exactly the edges after it.
    cursors = [e["cursor"] for e in everything["edges"]]
    for i, cursor in enumerate(cursors):
        rest = await gql.data(DOCUMENTS, {"first": 100, "after": cursor}, token=token)
        assert [e["node"]["id"] for e in rest["documents"]["edges"]] == newest_first[i + 1 :]
        # Items come before the cursor's own item unless it is the newest.
        assert rest["documents"]["pageInfo"]["hasPreviousPage"] is (i > 0)
        assert rest["documents"]["pageInfo"]["hasNextPage"] is False
    # A cursor newer than every document: nothing precedes the page, which holds them all.
    future = raw_cursor(f"9999-01-01T00:00:00+00:00|{uuid.uuid4()}")
    ahead = (await gql.data(DOCUMENTS, {"first": 100, "after": future}, token=token))["documents"]
    assert [e["node"]["id"] for e in ahead["edges"]] == newest_first
    assert ahead["pageInfo"]["hasPreviousPage"] is False
    default = await gql.data("{ documents { edges { node { id } } } }", token=token)
    assert len(default["documents"]["edges"]) == 5, "the default page holds them all"

    some_id = uploaded[0]["id"]
    malformed = [
        "not a cursor!",
        "Zm9v",  # base64 of "foo"
        raw_cursor("\udcff\udcfe garbage"),
        raw_cursor(f"yesterday|{some_id}"),
        raw_cursor("2024-01-01T00:00:00+00:00|not-a-uuid"),
        raw_cursor(f"2024-01-01T00:00:00|{some_id}"),  # no offset: not one of ours
        raw_cursor(f"9999-12-31T23:59:59-23:59|{some_id}"),  # overflows in UTC
    ]
    for cursor in malformed:
        body = await gql.execute(DOCUMENTS, {"first": 2, "after": cursor}, token=token)
        assert_error(body, "BAD_USER_INPUT", "Malformed cursor")
    # An empty `after` means "from the start", as if it were omitted.
    body = await gql.data(DOCUMENTS, {"first": 2, "after": ""}, token=token)
    assert [e["node"]["id"] for e in body["documents"]["edges"]] == newest_first[:2]
    for first in (0, -1, 101, 10_000):
        body = await gql.execute(DOCUMENTS, {"first": first}, token=token)
        assert_error(body, "BAD_USER_INPUT", "first", "between 1 and 100")

    # document(id)
    doc, pdf = uploaded[2], pdfs[2]
    found = await gql.data(DOCUMENT, {"id": doc["id"]}, token=token)
    assert found["document"] == doc
    not_found_messages = set()
    for missing in (str(uuid.uuid4()), "not-a-uuid", "", "12345"):
        body = await gql.execute(DOCUMENT, {"id": missing}, token=token)
        not_found_messages.add(assert_error(body, "NOT_FOUND", "not found"))
        body = await gql.execute(DELETE, {"id": missing}, token=token)
        not_found_messages.add(assert_error(body, "NOT_FOUND", "not found"))
    assert not_found_messages == {"Document not found"}, "no id is told apart from another"

    # deleteDocument(id): the document and its chunks go, the others stay.
    assert await chunk_counts(settings) == {d["id"]: 2 for d in uploaded}
    deleted = await gql.data(DELETE, {"id": doc["id"]}, token=token)
    assert deleted == {"deleteDocument": True}
    assert await chunk_counts(settings) == {d["id"]: 2 for d in uploaded if d is not doc}
    assert await stored_counts(settings) == (4, 8)

    again = await gql.execute(DELETE, {"id": doc["id"]}, token=token)
    assert_error(again, "NOT_FOUND", "Document not found")
    gone = await gql.execute(DOCUMENT, {"id": doc["id"]}, token=token)
    assert_error(gone, "NOT_FOUND", "Document not found")
    listed = await gql.data(DOCUMENTS, {"first": 10}, token=token)
    remaining = [i for i in newest_first if i != doc["id"]]
    assert [e["node"]["id"] for e in listed["documents"]["edges"]] == remaining
    # The deleted document's cursor still marks its place.
    at_deleted = cursors[newest_first.index(doc["id"])]
    rest = await gql.data(DOCUMENTS, {"first": 10, "after": at_deleted}, token=token)
    assert [e["node"]["id"] for e in rest["documents"]["edges"]] == [
        uploaded[1]["id"],
        uploaded[0]["id"],
    ]

    # Deleted bytes can come back, as a new document.
    back = await upload_ok(gql, "doc2.pdf", pdf, token)
    assert back["duplicate"] is False and back["id"] != doc["id"]
