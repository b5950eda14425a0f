"""Document metadata: the file's own (title, author, date) read at indexing from every format
that states them, and the user's (`uploadDocument(metadata:)`, `updateDocumentMetadata`)
with its shape checked, filtering `search`, `documents` and the vector search's scope."""

from __future__ import annotations

import asyncio
import io
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docx
import openpyxl
import pptx
import pytest

from rag_gql.config import Settings
from rag_gql.errors import InvalidInput
from rag_gql.repositories import chunks, search_sql
from rag_gql.repositories.search_sql import ChunkScope, ExactScan, VectorStrategy
from rag_gql.services import parsing
from rag_gql.services.metadata import ConditionInput, check_conditions, check_metadata
from rag_gql.services.properties import FileProperties, file_properties, iso_date, pdf_date
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.ollama_standin import embed_text
from tests.support.pdfs import make_pdf, pymupdf
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error
from tests.support.vector_index import build_index, hnsw_scan
from tests.test_search_strategy import app_database

WHEN = datetime(2024, 3, 15, 9, 30, tzinfo=UTC)
FIELDS = "id status error title author authoredAt metadata"
SEARCH = (
    "query($q: String!, $k: Int, $mode: SearchMode!, $filter: SearchFilter) "
    "{ search(query: $q, k: $k, mode: $mode, filter: $filter) { page document { filename } } }"
)
DOCUMENTS = (
    "query($m: [MetadataCondition!], $first: Int) { documents(metadata: $m, first: $first) "
    "{ edges { node { filename } } } }"
)
ASK = (
    "mutation($q: String!, $f: SearchFilter) { ask(question: $q, k: 5, filter: $f) "
    "{ sources { document { filename } } error { code } } }"
)
UPDATE = (
    "mutation($id: ID!, $m: JSON!) { updateDocumentMetadata(id: $id, metadata: $m) "
    "{ id metadata } }"
)


def pdf_with_info() -> bytes:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "A page about the tides of the northern sea.")
    doc.set_metadata(
        {"title": "Tides", "author": "Ada Lovelace", "creationDate": "D:20240315103000+01'00'"}
    )
    data: bytes = doc.tobytes()
    return data


def pdf_with_xmp_only() -> bytes:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Text.")
    doc.set_xml_metadata(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        '<rdf:Description rdf:about="" xmp:CreateDate="2024-03-15T09:30:00Z">'
        '<dc:title><rdf:Alt><rdf:li xml:lang="x-default">XMP title</rdf:li></rdf:Alt></dc:title>'
        "<dc:creator><rdf:Seq><rdf:li>Grace Hopper</rdf:li></rdf:Seq></dc:creator>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    data: bytes = doc.tobytes()
    return data


def office_files(tmp: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    d = docx.Document()
    d.add_paragraph("Body.")
    d.core_properties.title, d.core_properties.author = "Word title", "Ada Lovelace"
    d.core_properties.created = WHEN.replace(tzinfo=None)
    files[parsing.DOCX] = tmp / "a.docx"
    d.save(str(files[parsing.DOCX]))
    book = openpyxl.Workbook()
    book.active.append(["h", "v"])  # type: ignore[union-attr]
    book.properties.title, book.properties.creator = "Sheet title", "Ada Lovelace"
    book.properties.created = WHEN.replace(tzinfo=None)
    files[parsing.XLSX] = tmp / "a.xlsx"
    book.save(files[parsing.XLSX])
    deck = pptx.Presentation()
    deck.slides.add_slide(deck.slide_layouts[0]).shapes.title.text = "Slide"
    deck.core_properties.title, deck.core_properties.author = "Deck title", "Ada Lovelace"
    deck.core_properties.created = WHEN.replace(tzinfo=None)
    files[parsing.PPTX] = tmp / "a.pptx"
    deck.save(str(files[parsing.PPTX]))
    return files


def epub() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr(
            "META-INF/container.xml",
            '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0">'
            '<rootfiles><rootfile full-path="OEBPS/content.opf" '
            'media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        archive.writestr(
            "OEBPS/content.opf",
            '<package xmlns="http://www.idpf.org/2007/opf" version="3.0"><metadata '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Book title</dc:title>'
            "<dc:creator>Ada Lovelace</dc:creator><dc:date>2024-03-15</dc:date></metadata>"
            "</package>",
        )
    return out.getvalue()


def test_file_properties_of_every_format(tmp_path: Path) -> None:
    cases: dict[str, tuple[Path, FileProperties]] = {}
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(pdf_with_info())
    cases["pdf info"] = (pdf, FileProperties("Tides", "Ada Lovelace", WHEN))
    xmp = tmp_path / "x.pdf"
    xmp.write_bytes(pdf_with_xmp_only())
    cases["pdf xmp"] = (xmp, FileProperties("XMP title", "Grace Hopper", WHEN))
    book = tmp_path / "a.epub"
    book.write_bytes(epub())
    cases["epub"] = (
        book,
        FileProperties("Book title", "Ada Lovelace", datetime(2024, 3, 15, tzinfo=UTC)),
    )
    for media_type, path in office_files(tmp_path).items():
        title = {parsing.DOCX: "Word", parsing.XLSX: "Sheet", parsing.PPTX: "Deck"}[media_type]
        cases[media_type] = (path, FileProperties(f"{title} title", "Ada Lovelace", WHEN))
    html = tmp_path / "a.html"
    html.write_text(
        "<html><head><title> Page\ttitle </title><meta name='author' content='Ada Lovelace'>"
        "<meta name='date' content='2024-03-15T10:30:00+01:00'></head><body><p>x</p></body>"
    )
    cases["html"] = (html, FileProperties("Page title", "Ada Lovelace", WHEN))
    for name, (path, expected) in cases.items():
        media_type = parsing.detect_type(path, path.name)
        assert file_properties(path, media_type) == expected, name

    # Absent: null, never an error (a bare PDF, plain text, a damaged file).
    bare = tmp_path / "bare.pdf"
    bare.write_bytes(make_pdf(["no properties"]))
    assert file_properties(bare, parsing.PDF) == FileProperties()
    text = tmp_path / "a.txt"
    text.write_text("plain")
    assert file_properties(text, parsing.TEXT) == FileProperties()
    broken = tmp_path / "broken.docx"
    broken.write_bytes(b"PK\x03\x04 not really")
    assert file_properties(broken, parsing.DOCX) == FileProperties()


def test_dates_and_bad_dates() -> None:
    assert pdf_date("D:2024") == datetime(2024, 1, 1, tzinfo=UTC)
    assert pdf_date("D:20240315093000Z") == WHEN
    assert pdf_date("D:20241345") is None, "month 13"
    assert pdf_date("yesterday") is None
    assert iso_date("2024-03") == datetime(2024, 3, 1, tzinfo=UTC)
    assert iso_date("2024-03-15T09:30:00Z") == WHEN
    assert iso_date("March") is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({"a": {"b": 1}}, "metadata.a is nested"),
        ({"a": [1, [2]]}, "metadata.a[1] is nested"),
        ({"a": None}, "metadata.a is null"),
        ({"a": "x\x00y"}, "NUL"),
        ({"": 1}, "non-empty"),
        ({"k" * 129: 1}, "longer than 128"),
        ({"a\nb": 1}, "control character"),
        ({"a": float("inf")}, "not a finite number"),
        ({"a": "x" * 20000}, "MAX_METADATA_BYTES"),
    ],
)
def test_bad_metadata_is_refused_saying_what_is_wrong(value: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=None) as raised:
        check_metadata(value, max_bytes=16384)
    assert fragment in str(raised.value)


def test_metadata_keeps_flat_values() -> None:
    value = {"team": "search", "year": 2024, "score": 0.5, "draft": False, "tags": ["a", 1]}
    assert check_metadata(value, max_bytes=16384) == value


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        (ConditionInput("a"), "sets none"),
        (ConditionInput("a", eq=1, gte=0), "sets eq, gte"),
        (ConditionInput("a", in_=[]), "1 to 100"),
        (ConditionInput("a", gte=True), "not a boolean"),
        (ConditionInput("a", lte={"x": 1}), "nested"),
        (ConditionInput("", exists=True), "non-empty"),
    ],
)
def test_bad_conditions_are_refused(condition: ConditionInput, fragment: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_conditions([condition])
    assert fragment in str(raised.value)
    with pytest.raises(InvalidInput, match="at most 20"):
        check_conditions([ConditionInput("a", exists=True)] * 21)


async def upload(gql: GraphQLClient, token: str, name: str, data: bytes, meta: Any) -> Json:
    response = await gql.upload(name, data, token=token, metadata=meta, fields=FIELDS)
    body: Json = response.json()
    assert not body.get("errors"), body
    document: Json = body["data"]["uploadDocument"]
    assert document["status"] == "READY", document
    return document


async def filenames(gql: GraphQLClient, token: str, filter: Json, q: str = "tides") -> list[str]:
    data = await gql.data(
        SEARCH, {"q": q, "k": 10, "mode": "HYBRID", "filter": filter}, token=token
    )
    return sorted({hit["document"]["filename"] for hit in data["search"]})


async def listed(gql: GraphQLClient, token: str, conditions: list[Json] | None) -> list[str]:
    data = await gql.data(DOCUMENTS, {"m": conditions}, token=token)
    return sorted(edge["node"]["filename"] for edge in data["documents"]["edges"])


async def test_metadata_over_graphql_filters_search_and_documents(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    a = await upload(
        gql,
        token,
        "a.pdf",
        pdf_with_info(),
        {"team": "ocean", "year": 2021, "tags": ["tides", "sea"]},
    )
    assert (a["title"], a["author"], a["authoredAt"]) == (
        "Tides",
        "Ada Lovelace",
        "2024-03-15T09:30:00+00:00",
    )
    assert a["metadata"] == {"team": "ocean", "year": 2021, "tags": ["tides", "sea"]}
    b = await upload(
        gql,
        token,
        "b.pdf",
        make_pdf(["The tides of the southern sea."]),
        {"team": "coast", "year": 2024, "date": "2024-06-01"},
    )
    assert (b["title"], b["author"], b["authoredAt"]) == (None, None, None)
    c = await upload(gql, token, "c.pdf", make_pdf(["Tides and the moon."]), None)
    assert c["metadata"] == {}

    everything = ["a.pdf", "b.pdf", "c.pdf"]
    assert await filenames(gql, token, {}) == everything
    cases: list[tuple[list[Json], list[str]]] = [
        ([{"key": "team", "eq": "ocean"}], ["a.pdf"]),
        ([{"key": "tags", "eq": "sea"}], ["a.pdf"]),  # a list holds it
        ([{"key": "tags", "eq": ["tides", "sea"]}], ["a.pdf"]),  # equals the list
        ([{"key": "tags", "eq": ["sea"]}], []),
        ([{"key": "team", "in": ["ocean", "coast"]}], ["a.pdf", "b.pdf"]),
        ([{"key": "year", "gte": 2022}], ["b.pdf"]),
        ([{"key": "year", "lte": 2021.5}], ["a.pdf"]),
        ([{"key": "year", "gte": "2000"}], []),  # a string bound matches strings only
        ([{"key": "date", "gte": "2024-05-31"}, {"key": "date", "lte": "2024-06-01"}], ["b.pdf"]),
        ([{"key": "team", "exists": True}], ["a.pdf", "b.pdf"]),
        ([{"key": "team", "exists": False}], ["c.pdf"]),
        ([{"key": "team", "eq": "ocean"}, {"key": "year", "gte": 2022}], []),
        ([{"key": "nothing", "eq": 1}], []),
    ]
    for conditions, expected in cases:
        assert await filenames(gql, token, {"metadata": conditions}) == expected, conditions
        assert await listed(gql, token, conditions) == expected, conditions
    assert await listed(gql, token, None) == everything
    # A hit's document carries its metadata and properties (read by the search's own SQL).
    hit_query = (
        'query($f: SearchFilter) { search(query: "tides", mode: VECTOR, filter: $f) '
        "{ document { title metadata } } }"
    )
    only_a = {"metadata": [{"key": "team", "eq": "ocean"}]}
    hits = (await gql.data(hit_query, {"f": only_a}, token=token))["search"]
    assert hits and all(
        h["document"] == {"title": "Tides", "metadata": a["metadata"]} for h in hits
    ), hits
    # `ask` (and `answer`) share the filter: sources only from the documents it keeps.
    only_ocean = {"metadata": [{"key": "team", "eq": "ocean"}]}
    asked = (await gql.data(ASK, {"q": "tides of the sea", "f": only_ocean}, token=token))["ask"]
    assert {s["document"]["filename"] for s in asked["sources"]} == {"a.pdf"}, asked

    # Replaced at once, searchable without reindexing; the file's own properties stay.
    data = await gql.data(UPDATE, {"id": c["id"], "m": {"team": "ocean"}}, token=token)
    assert data["updateDocumentMetadata"] == {"id": c["id"], "metadata": {"team": "ocean"}}
    assert await filenames(gql, token, {"metadata": [{"key": "team", "eq": "ocean"}]}) == [
        "a.pdf",
        "c.pdf",
    ]
    data = await gql.data(UPDATE, {"id": a["id"], "m": {}}, token=token)
    assert data["updateDocumentMetadata"]["metadata"] == {}
    doc = await gql.wait_for_document(a["id"], fields=FIELDS, token=token)
    assert (doc["title"], doc["metadata"]) == ("Tides", {})

    # Bad shapes and bad conditions: BAD_USER_INPUT saying what is wrong; nothing stored.
    for bad, fragment in [
        ({"a": {"b": 1}}, "nested"),
        ([1], "JSON object"),
        ({"a": "x" * 17000}, "MAX_METADATA_BYTES"),
    ]:
        body = await gql.execute(UPDATE, {"id": b["id"], "m": bad}, token=token)
        assert_error(body, "BAD_USER_INPUT", fragment)
        response = await gql.upload(
            "d.pdf", make_pdf(["new"]), token=token, metadata=bad, wait=False
        )
        assert_error(response.json(), "BAD_USER_INPUT", fragment)
    # NUL anywhere in the variables is refused before any resolver. (A 10 MB value never
    # gets this far: GRAPHQL_MAX_BODY_BYTES stops a JSON body, and Starlette's multipart
    # parser a form part over 1 MiB.)
    nul = {"a": "x\x00y"}
    body = await gql.execute(UPDATE, {"id": b["id"], "m": nul}, token=token)
    assert_error(body, "BAD_USER_INPUT", "NUL")
    response = await gql.upload("d.pdf", make_pdf(["new"]), token=token, metadata=nul, wait=False)
    assert_error(response.json(), "BAD_USER_INPUT", "NUL")
    assert await listed(gql, token, None) == everything, "no document stored"
    doc = await gql.wait_for_document(b["id"], fields=FIELDS, token=token)
    assert doc["metadata"]["team"] == "coast"
    two = [{"key": "team", "eq": "ocean", "exists": True}]
    bad_filters: list[tuple[str, Json]] = [
        (SEARCH, {"q": "tides", "mode": "VECTOR", "filter": {"metadata": two}}),
        (DOCUMENTS, {"m": two}),
    ]
    for query, variables in bad_filters:
        assert_error(
            await gql.execute(query, variables, token=token), "BAD_USER_INPUT", "exactly one"
        )


async def test_recall_under_a_selective_metadata_filter(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """A filter keeping 4 of 40 documents (4 of ~3,040 chunks, the others nearer the query):
    the exact scan and the HNSW index (forced, `ef_search` 10) both return all 4 documents'
    chunks nearest first, and none outside the filter."""
    token = await sign_up(gql, inbox, "ada@example.com")
    topics = ["harbour", "glacier", "orchard", "volcano", "meadow"]
    kept: set[str] = set()
    for i in range(40):
        words = (
            f"Note {i} about the {topics[i % 5]} and the {topics[(i * 3) % 5]} seen in year {i}."
        )
        tag = "keep" if i % 13 == 0 else "other"
        if tag == "keep":
            kept.add(words)
        response = await gql.upload(
            f"n{i}.pdf", make_pdf([words]), token=token, metadata={"set": tag, "i": i}, wait=False
        )
        assert not response.json().get("errors"), response.text
    for _ in range(600):
        async with connect(settings) as conn:
            ready = await conn.fetchval("SELECT count(*) FROM document WHERE status = 'READY'")
        if ready == 40:
            break
        await asyncio.sleep(0.1)
    query = "the glacier and the orchard"
    q = embed_text(query, settings.embed_dim)
    async with connect(settings) as conn:
        workspace: uuid.UUID = await conn.fetchval("SELECT workspace_id FROM document LIMIT 1")
        texts = dict(await conn.fetch("SELECT id, text FROM chunk"))
        # 3,000 chunks outside the filter, nearer the query than any inside it: the index's
        # first candidates all fail the filter, so only its iterative scan finds the 4.
        filler = [
            "[" + ",".join(f"{x:.6f}" for x in embed_text(f"{query} {w}", settings.embed_dim)) + "]"
            for w in (f"w{n % 97} w{n % 89}" for n in range(3000))
        ]
        other = await conn.fetchval("SELECT id FROM document WHERE filename = 'n1.pdf'")
        await conn.execute(
            "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start, char_end,"
            " text, embedding) SELECT $1, $2, 10 + n, 1, 0, 6, 'filler', v::vector"
            " FROM unnest($3::text[]) WITH ORDINALITY AS t(v, n)",
            workspace,
            other,
            filler,
        )
        await conn.execute("ANALYZE chunk")
    truth = [cid for cid, text in texts.items() if text.strip() in kept]  # the filter's
    assert len(truth) == 4  # notes 0, 13, 26, 39
    (condition,) = check_conditions([ConditionInput("set", eq="keep")])
    scope = ChunkScope(metadata=[condition])
    await build_index(settings, workspace)
    async with app_database(settings) as db:
        for exact, strategy in [
            (ExactScan(1000), VectorStrategy.EXACT),
            (ExactScan(0), VectorStrategy.HNSW),
        ]:
            statements = search_sql.vector_statements(
                workspace_id=workspace,
                embedding=q,
                limit=10,
                ef_search=10,
                exact=exact,
                scope=scope,
            )
            async with db.driver_transaction(workspace) as conn:
                ranking = await chunks.vector_ranked(conn, statements)
                if strategy is VectorStrategy.HNSW:
                    # PostgreSQL may rank a selective scope without the index; made to use
                    # it, the iterative scan still finds all 4, and without that scan the
                    # index's 10 candidates (all filler) leave fewer: the filter is selective.
                    hnsw = statements.hnsw
                    await conn.execute("SET LOCAL enable_sort = off")
                    await conn.execute("SET LOCAL enable_seqscan = off")
                    plan = await conn.fetch("EXPLAIN " + hnsw.sql, *hnsw.args)
                    assert hnsw_scan(workspace) in "\n".join(r[0] for r in plan)
                    indexed = await conn.fetch(hnsw.sql, *hnsw.args)
                    assert sorted(r[0] for r in indexed) == sorted(truth)
                    await conn.execute("SET LOCAL hnsw.iterative_scan = off")
                    plain = await conn.fetch(hnsw.sql, *hnsw.args)
                    assert len(plain) < len(truth), plain
            assert ranking.strategy is strategy
            # The filter's chunks, nearest first (equal distances in either order).
            assert sorted(cid for cid, _ in ranking.rows) == sorted(truth), strategy
            distances = [distance for _, distance in ranking.rows]
            assert distances == sorted(distances), strategy
    # Through the API (exact for this small scope), with the keyword side too.
    hits = await gql.data(
        SEARCH,
        {
            "q": query,
            "k": 10,
            "mode": "HYBRID",
            "filter": {"metadata": [{"key": "set", "eq": "keep"}]},
        },
        token=token,
    )
    assert sorted(h["document"]["filename"] for h in hits["search"]) == [
        "n0.pdf",
        "n13.pdf",
        "n26.pdf",
        "n39.pdf",
    ]
