"""Documents as people have them, shown on real files over GraphQL (issue 18).

Starts an embedded PostgreSQL, the Ollama stand-in, a real SMTP sink and the server; signs up
over GraphQL; then, on real files:

1. a scanned PDF: pages of a real PDF rendered to images (no text layer), found by its words
   through `search` (`ocrPages` says how many were OCRed), with the OCR rate in pages/s;
2. a table cell found with its column header: a real HTML page with a `<table>`;
3. a metadata-filtered search: two real documents tagged differently, the filter keeps one.

    python bench/documents.py --pdf ../corpus-pdfs/SOME.pdf --html /tmp/corpus-sqlite/datatype3.html

Needs Tesseract (`tesseract-ocr`, `tesseract-ocr-eng`). Prints each result; exits 1 when a
demonstration fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pymupdf as _pymupdf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.config import Settings  # noqa: E402 - after the path set-up above
from rag_gql.db import migrate  # noqa: E402 - after the path set-up above
from rag_gql.db.embedded import start_embedded  # noqa: E402 - after the path set-up above
from tests.support.accounts import sign_up  # noqa: E402 - after the path set-up above
from tests.support.graphql_client import GraphQLClient  # noqa: E402 - after the path set-up above
from tests.support.ollama_standin import OllamaStandin  # noqa: E402 - after the path set-up above
from tests.support.serving import serve  # noqa: E402 - after the path set-up above
from tests.support.smtp import SmtpSink  # noqa: E402 - after the path set-up above

pymupdf: Any = _pymupdf  # untyped

SEARCH = (
    "query($q: String!, $f: SearchFilter) { search(query: $q, k: 3, mode: KEYWORD, filter: $f)"
    " { text page document { filename ocrPages metadata } } }"
)
DOCUMENT = "query($id: ID!) { document(id: $id) { status error ocrPages pageCount } }"


def scanned(pdf: Path, pages: int) -> bytes:
    """The first `pages` pages of `pdf` as images at 150 dpi, in a PDF with no text layer."""
    source = pymupdf.open(pdf)
    out = pymupdf.open()
    for number in range(min(pages, source.page_count)):
        pixmap = source[number].get_pixmap(dpi=150)
        page = out.new_page(width=source[number].rect.width, height=source[number].rect.height)
        page.insert_image(page.rect, pixmap=pixmap)
    data: bytes = out.tobytes()
    return data


async def wait_ready(gql: GraphQLClient, token: str, document_id: str) -> dict[str, Any]:
    """Polls the document until it is READY or FAILED."""
    while True:
        found: dict[str, Any] = (await gql.data(DOCUMENT, {"id": document_id}, token=token))[
            "document"
        ]
        if found["status"] in ("READY", "FAILED"):
            return found
        await asyncio.sleep(0.2)


async def upload(
    gql: GraphQLClient, token: str, name: str, data: bytes, metadata: dict[str, Any] | None
) -> str:
    """Uploads and returns the document's id."""
    response = await gql.upload(name, data, token=token, metadata=metadata)
    body = response.json()
    document_id: str = body["data"]["uploadDocument"]["id"]
    return document_id


async def run(args: argparse.Namespace) -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        embedded = start_embedded(Path(tmp) / "pgdata")
        ollama = OllamaStandin().start()
        smtp = SmtpSink().start()
        try:
            await asyncio.to_thread(migrate.upgrade, embedded.url, embed_dim=768)
            settings = Settings(
                _env_file=None,
                database_url=embedded.url,
                data_dir=Path(tmp),
                ollama_url=ollama.url,
                smtp_host="127.0.0.1",
                smtp_port=smtp.port,
                metrics_port=0,
            )
            async with serve(settings) as url, httpx.AsyncClient(timeout=600) as http:
                gql = GraphQLClient(http, url)
                token = await sign_up(gql, smtp.inbox, "demo@example.com")

                # 1. A scanned PDF.
                words = pymupdf.open(args.pdf)[0].get_text().split()
                phrase = " ".join([w for w in words if w.isalpha() and len(w) > 4][:4])
                started = time.perf_counter()
                scan_id = await upload(
                    gql, token, "scan.pdf", scanned(args.pdf, args.pages), {"kind": "scan"}
                )
                state = await wait_ready(gql, token, scan_id)
                seconds = time.perf_counter() - started
                hits = (await gql.data(SEARCH, {"q": phrase}, token=token))["search"]
                found = bool(hits) and hits[0]["document"]["filename"] == "scan.pdf"
                failures += not found
                print(f"1. scanned PDF ({args.pdf.name}, {args.pages} pages as images): {state}")
                print(
                    f"   OCR: {state['ocrPages']} pages in {seconds:.1f} s (upload to READY) ="
                    f" {int(state['ocrPages'] or 0) / seconds:.2f} pages/s"
                )
                top: dict[str, Any] = (
                    hits[0] if hits else {"document": {"filename": None}, "page": None}
                )
                print(
                    f"   search {phrase!r}: top hit {top['document']['filename']} page"
                    f" {top['page']}: {'FOUND' if found else 'MISSED'}"
                )

                # 2. A table cell with its column header.
                html_id = await upload(
                    gql, token, args.html.name, args.html.read_bytes(), {"kind": "html"}
                )
                await wait_ready(gql, token, html_id)
                hits = (await gql.data(SEARCH, {"q": args.cell}, token=token))["search"]
                text = hits[0]["text"] if hits else ""
                together = args.cell.lower() in text.lower() and args.header.lower() in text.lower()
                failures += not together
                print(
                    f"2. table cell {args.cell!r} in {args.html.name}: header {args.header!r}"
                    f" in the same chunk: {'YES' if together else 'NO'}"
                )
                for line in text.splitlines():
                    if "|" in line and (
                        args.header.lower() in line.lower() or args.cell.lower() in line.lower()
                    ):
                        print("   " + line[:160])

                # 3. A metadata-filtered search: a query whose words are in both documents.
                query = f"{phrase} {args.cell}"
                flt = {"metadata": [{"key": "kind", "eq": "html"}]}
                plain = (await gql.data(SEARCH, {"q": query}, token=token))["search"]
                hits = (await gql.data(SEARCH, {"q": query, "f": flt}, token=token))["search"]
                names = sorted({h["document"]["filename"] for h in plain})
                only = bool(hits) and all(
                    h["document"]["metadata"].get("kind") == "html" for h in hits
                )
                failures += not only
                print(f"3. search {query!r}: unfiltered {len(plain)} hits from {names};")
                print(
                    f"   with metadata kind = html: {len(hits)} hits, all from"
                    f" {sorted({h['document']['filename'] for h in hits})}:"
                    f" {'YES' if only else 'NO'}"
                )
        finally:
            smtp.stop()
            ollama.stop()
            embedded.stop()
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf", type=Path, required=True, help="a real PDF to scan")
    parser.add_argument("--pages", type=int, default=4, help="pages of it to scan (default 4)")
    parser.add_argument("--html", type=Path, required=True, help="a real HTML page with a table")
    parser.add_argument("--cell", default="DOUBLE PRECISION", help="a cell's text to search for")
    parser.add_argument("--header", default="Resulting Affinity", help="its column's header")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
