"""`GET /documents/{id}/file` over real HTTP (the served app), and the URLs that point at it:
`Document.fileUrl`, `SearchHit.url` and `Citation.url` (`#page=N` for PDFs)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
import pymupdf
from starlette.types import ASGIApp, Message, Scope

from rag_gql.config import Settings
from rag_gql.errors import NotFound
from rag_gql.graphql.files import content_disposition
from rag_gql.ingestion.submit import PART_SIZE
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.pdfs import make_pdf
from tests.support.serving import Served, serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect

FIELDS = "id filename sha256 status fileUrl"
DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
SEARCH = (
    "query($q: String!, $d: [ID!]) { search(query: $q, k: 5, filter: {documentIds: $d}) "
    "{ page url document { id mediaType } } }"
)
ASK = (
    "mutation($q: String!) { ask(question: $q, k: 3) "
    "{ sources { page url document { id } } citations { page url documentId } } }"
)
PAGES = ["A first page about lighthouses.", "The second page: the keeper of the lamp."]

_open: Any = pymupdf.open


def big_pdf(size: int) -> bytes:
    """A valid one-page PDF of more than `size` bytes: it carries `size` random bytes as an
    embedded file (random bytes do not compress)."""
    doc = _open()
    page = doc.new_page()
    page.insert_text((72, 72), "A large file with an attachment.")
    doc.embfile_add("noise.bin", os.urandom(size))
    data: bytes = doc.tobytes()
    doc.close()
    assert len(data) > size
    return data


async def upload(gql: GraphQLClient, filename: str, content: bytes, token: str) -> Json:
    response = await gql.upload(filename, content, token=token, fields=FIELDS)
    body: Json = response.json()
    assert not body.get("errors"), body
    document: Json = body["data"]["uploadDocument"]
    assert document["status"] == "READY", document
    return document


def auth(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


async def test_the_file_comes_back_with_its_type_name_etag_and_path(
    gql: GraphQLClient, inbox: Inbox, server_url: str
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = make_pdf(PAGES)
    doc = await upload(gql, "report.pdf", pdf, token)
    assert doc["fileUrl"] == f"/documents/{doc['id']}/file"

    response = await gql.http.get(server_url + doc["fileUrl"], headers=auth(token))

    assert response.status_code == 200
    assert response.content == pdf
    assert hashlib.sha256(response.content).hexdigest() == doc["sha256"]
    headers = response.headers
    assert headers["content-type"] == "application/pdf"
    assert headers["content-length"] == str(len(pdf))
    assert headers["content-disposition"] == 'inline; filename="report.pdf"'
    assert headers["etag"] == f'"{doc["sha256"]}"'
    assert headers["accept-ranges"] == "bytes"
    assert headers["cache-control"] == "private, no-cache"
    assert headers["x-content-type-options"] == "nosniff"

    # HEAD: the same headers, no body.
    head = await gql.http.head(server_url + doc["fileUrl"], headers=auth(token))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(pdf))
    assert head.headers["etag"] == headers["etag"]

    # The ETag revalidates: 304 without a body.
    again = await gql.http.get(
        server_url + doc["fileUrl"], headers=auth(token, **{"If-None-Match": headers["etag"]})
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == headers["etag"]
    other = await gql.http.get(
        server_url + doc["fileUrl"], headers=auth(token, **{"If-None-Match": '"elsewise"'})
    )
    assert other.status_code == 200 and other.content == pdf


async def test_ranges(gql: GraphQLClient, inbox: Inbox, server_url: str) -> None:
    """RFC 9110 section 14: one range is 206 with Content-Range, past the end is 416,
    several ranges or a bad header are ignored (200), If-Range keeps a range only for the
    current ETag."""
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = make_pdf(PAGES)
    doc = await upload(gql, "report.pdf", pdf, token)
    url, size = server_url + doc["fileUrl"], len(pdf)
    etag = f'"{doc["sha256"]}"'

    async def get(**headers: str) -> httpx.Response:
        return await gql.http.get(url, headers=auth(token, **headers))

    cases = {
        "bytes=10-19": (10, 20),
        "bytes=0-0": (0, 1),
        "bytes=-7": (size - 7, size),
        f"bytes={size - 3}-": (size - 3, size),
        f"bytes=5-{size + 1000}": (5, size),
        f"bytes=-{size + 1000}": (0, size),
    }
    for header, (start, end) in cases.items():
        response = await get(Range=header)
        assert response.status_code == 206, header
        assert response.content == pdf[start:end], header
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{size}", header
        assert response.headers["content-length"] == str(end - start)
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["etag"] == etag

    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0", "bytes=9-3"):
        response = await get(Range=header)
        assert response.status_code == 416, header
        assert response.headers["content-range"] == f"bytes */{size}", header
        assert response.content == b""

    for header in ("bytes=0-1,5-6", "items=0-5", "bytes=x-y", "bytes=-", "bytes 0-5"):
        response = await get(Range=header)
        assert response.status_code == 200, header
        assert response.content == pdf, header

    kept = await get(Range="bytes=0-9", **{"If-Range": etag})
    assert kept.status_code == 206 and kept.content == pdf[:10]
    dropped = await get(Range="bytes=0-9", **{"If-Range": '"an-older-version"'})
    assert dropped.status_code == 200 and dropped.content == pdf


async def test_a_non_ascii_filename_is_sent_as_utf8(
    gql: GraphQLClient, inbox: Inbox, server_url: str
) -> None:
    """RFC 6266: an ASCII `filename` fallback and `filename*` in UTF-8 (RFC 8187)."""
    token = await sign_up(gql, inbox, "ada@example.com")
    doc = await upload(gql, "Résumé \u2013 東京.pdf", make_pdf(PAGES), token)
    response = await gql.http.get(server_url + doc["fileUrl"], headers=auth(token))
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        'inline; filename="R_sum_ _ __.pdf"; '
        "filename*=UTF-8''R%C3%A9sum%C3%A9%20%E2%80%93%20%E6%9D%B1%E4%BA%AC.pdf"
    )
    # What a header cannot hold as it is: quotes and backslashes (the fallback replaces them).
    assert content_disposition('a "b"\\c.txt', "attachment") == (
        "attachment; filename=\"a _b__c.txt\"; filename*=UTF-8''a%20%22b%22%5Cc.txt"
    )


async def test_other_formats_are_attachments_in_a_sandbox(
    gql: GraphQLClient, inbox: Inbox, server_url: str
) -> None:
    """An uploaded HTML page never runs as the API's origin."""
    token = await sign_up(gql, inbox, "ada@example.com")
    page = b"<html><head><title>t</title></head><body><p>Hello lighthouse</p></body></html>"
    doc = await upload(gql, "page.html", page, token)
    response = await gql.http.get(server_url + doc["fileUrl"], headers=auth(token))
    assert response.status_code == 200 and response.content == page
    assert response.headers["content-type"] == "text/html"
    assert response.headers["content-disposition"] == 'attachment; filename="page.html"'
    assert response.headers["content-security-policy"] == "sandbox"


async def test_a_large_file_streams_part_by_part(
    gql: GraphQLClient, inbox: Inbox, served: Served
) -> None:
    """A file of several stored parts is sent as several body messages, none larger than a
    part (the app never holds the whole file), over HTTP whole and by a range across parts."""
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = big_pdf(3 * PART_SIZE + 12345)
    doc = await upload(gql, "big.pdf", pdf, token)
    parts = -(-len(pdf) // PART_SIZE)
    assert parts >= 4

    response = await gql.http.get(served.url + doc["fileUrl"], headers=auth(token))
    assert response.status_code == 200 and response.content == pdf
    start, end = PART_SIZE - 10, 2 * PART_SIZE + 10
    ranged = await gql.http.get(
        served.url + doc["fileUrl"], headers=auth(token, Range=f"bytes={start}-{end - 1}")
    )
    assert ranged.status_code == 206 and ranged.content == pdf[start:end]

    # The same request straight to the ASGI app, recording what it sends.
    bodies = await asgi_bodies(served, doc["fileUrl"], token)
    assert b"".join(bodies) == pdf
    assert len(bodies) == parts, [len(b) for b in bodies]
    assert max(len(b) for b in bodies) <= PART_SIZE
    across = await asgi_bodies(served, doc["fileUrl"], token, range_=f"bytes={start}-{end - 1}")
    assert [len(b) for b in across] == [10, PART_SIZE, 10]


async def test_a_file_deleted_while_it_streams_ends_short(
    gql: GraphQLClient, inbox: Inbox, served: Served, settings: Settings
) -> None:
    """The parts are read one transaction each, so a delete between two goes through, and
    the response stops short rather than mixing in anything else."""
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = big_pdf(2 * PART_SIZE)
    doc = await upload(gql, "big.pdf", pdf, token)

    async def delete_after_first(body: bytes) -> None:
        assert (await gql.data(DELETE, {"id": doc["id"]}, token=token))["deleteDocument"]

    try:
        bodies = await asgi_bodies(served, doc["fileUrl"], token, on_body=delete_after_first)
    except NotFound:
        pass
    else:
        raise AssertionError(f"the response did not stop: {len(bodies)} parts sent")
    async with connect(settings) as sql:
        assert await sql.fetchval("SELECT count(*) FROM document_file_part") == 0


async def asgi_bodies(
    served: Served,
    path: str,
    token: str,
    *,
    range_: str | None = None,
    on_body: Callable[[bytes], Awaitable[None]] | None = None,
) -> list[bytes]:
    """The non-empty `http.response.body` messages the served app sends for `GET path`
    (`on_body` is awaited with the first, before the app goes on)."""
    app = cast(ASGIApp, served.server.config.app)  # `create_app`'s Starlette app
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]
    if range_ is not None:
        headers.append((b"range", range_.encode()))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    requested = False
    forever = asyncio.Event()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await forever.wait()
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if on_body is not None and message.get("body") and len(sent) == 2:
            await on_body(message["body"])

    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] in (200, 206)
    return [m["body"] for m in sent[1:] if m.get("body")]


async def test_who_may_read_a_file(
    gql: GraphQLClient, inbox: Inbox, server_url: str, settings: Settings
) -> None:
    """No credentials: 401. Another workspace's id, a random id and a non-id: the same 404.
    A deleted document, and one marked for deletion: 404. An API key: as a bearer token."""
    ada = await sign_up(gql, inbox, "ada@example.com")
    eve = await sign_up(gql, inbox, "eve@example.com")
    doc = await upload(gql, "ada.pdf", make_pdf(["Ada's own words."]), ada)
    url = server_url + doc["fileUrl"]

    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"X-API-Key": "rgk_nonsense"}):
        refused = await gql.http.get(url, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert "Ada" not in refused.text

    theirs = await gql.http.get(url, headers=auth(eve))
    random = await gql.http.get(f"{server_url}/documents/{uuid.uuid4()}/file", headers=auth(eve))
    garbage = await gql.http.get(f"{server_url}/documents/not-an-id/file", headers=auth(eve))
    for response in (theirs, random, garbage):
        assert response.status_code == 404
        assert response.content == theirs.content
        assert response.headers["content-type"] == "application/json"
    assert theirs.json() == {
        "errors": [{"message": "Document not found", "extensions": {"code": "NOT_FOUND"}}]
    }
    # Ada's id under Eve's name in Ada's workspace: Eve is no member there.
    workspaces = await gql.data("{ workspaces { id } }", token=ada)
    ada_workspace = workspaces["workspaces"][0]["id"]
    aimed = await gql.http.get(url, headers=auth(eve, **{"X-Workspace-Id": ada_workspace}))
    assert aimed.status_code == 404 and "Ada" not in aimed.text

    key = await gql.data(
        'mutation($w: ID!) { createApiKey(workspaceId: $w, name: "reader", role: VIEWER) '
        "{ secret } }",
        {"w": ada_workspace},
        token=ada,
    )
    by_key = await gql.http.get(url, headers={"X-API-Key": key["createApiKey"]["secret"]})
    assert by_key.status_code == 200 and by_key.content[:5] == b"%PDF-"

    async with connect(settings) as sql:
        await sql.execute(
            "UPDATE document SET delete_requested_at = now() WHERE id = $1", uuid.UUID(doc["id"])
        )
    marked = await gql.http.get(url, headers=auth(ada))
    assert marked.status_code == 404 and marked.content == theirs.content

    other = await upload(gql, "other.pdf", make_pdf(["Other words."]), ada)
    assert (await gql.data(DELETE, {"id": other["id"]}, token=ada))["deleteDocument"] is True
    gone = await gql.http.get(server_url + other["fileUrl"], headers=auth(ada))
    assert gone.status_code == 404 and gone.content == theirs.content


async def test_the_file_route_is_rate_limited(inbox: Inbox, settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit_file_per_user": "2/minute"})
    async with serve_client(limited) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        doc = await upload(gql, "report.pdf", make_pdf(PAGES), token)
        url = gql.base_url + doc["fileUrl"]
        for _ in range(2):
            assert (await gql.http.get(url, headers=auth(token))).status_code == 200
        refused = await gql.http.get(url, headers=auth(token))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_hits_and_citations_open_the_page(
    gql: GraphQLClient, inbox: Inbox, server_url: str
) -> None:
    """`SearchHit.url` and `Citation.url`: `#page=N` for a PDF (RFC 8118), none for text."""
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = await upload(gql, "lamps.pdf", make_pdf(PAGES), token)
    text = await upload(gql, "lamps.txt", b"The keeper of the lamp wrote plain notes.", token)

    hits = (await gql.data(SEARCH, {"q": "keeper of the lamp", "d": [pdf["id"]]}, token=token))[
        "search"
    ]
    assert hits
    for hit in hits:
        assert hit["url"] == f"{pdf['fileUrl']}#page={hit['page']}"
    assert {hit["page"] for hit in hits} >= {2}
    plain = (await gql.data(SEARCH, {"q": "keeper", "d": [text["id"]]}, token=token))["search"]
    assert [hit["url"] for hit in plain] == [text["fileUrl"]]

    asked = (await gql.data(ASK, {"q": "Who kept the lamp?"}, token=token))["ask"]
    assert asked["citations"], asked
    for source in asked["sources"]:
        document_url = f"/documents/{source['document']['id']}/file"
        if source["document"]["id"] == pdf["id"]:
            assert source["url"] == f"{document_url}#page={source['page']}"
        else:
            assert source["url"] == document_url
    for citation in asked["citations"]:
        document_url = f"/documents/{citation['documentId']}/file"
        if citation["documentId"] == pdf["id"]:
            assert citation["url"] == f"{document_url}#page={citation['page']}"
        else:
            assert citation["url"] == document_url
        # The URL opens: its path serves the cited document's file.
        path = citation["url"].partition("#")[0]
        opened = await gql.http.get(server_url + path, headers=auth(token))
        assert opened.status_code == 200
