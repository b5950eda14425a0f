"""Ingest real PDFs through the real API, then search and stream an answer; print figures.

Usage:
    bash ../shared/corpus/get.sh ./corpus-pdfs      # LaTeX documentation PDFs from Debian
    python bench/corpus_demo.py ./corpus-pdfs --pdfs 20

Runs everything on this machine: an embedded PostgreSQL (temporary), the rag-gql app served by
uvicorn on loopback, the Ollama-protocol stand-in (instant hashed bag-of-words embeddings), and
an SMTP sink for the sign-up code. Prints, side by side, raw PyMuPDF text extraction on one
core (the floor) and the full upload path (parse, chunk, embed, write), both in pages/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pymupdf
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.app import create_app  # noqa: E402 - after the path set-up above
from rag_gql.config import Settings  # noqa: E402
from rag_gql.db import migrate  # noqa: E402
from rag_gql.db.embedded import start_embedded  # noqa: E402
from tests.support.accounts import sign_up  # noqa: E402
from tests.support.graphql_client import GraphQLClient, init  # noqa: E402
from tests.support.ollama_standin import OllamaStandin, StandinState  # noqa: E402
from tests.support.smtp import SmtpSink  # noqa: E402

_open: Any = pymupdf.open
QUESTION = "How do I keep spaces and line breaks verbatim but still use commands?"


def raw_extract_pages_per_second(paths: list[Path]) -> tuple[int, float]:
    """The floor: PyMuPDF text extraction of every page, one core. Returns (pages, pages/s)."""
    started = time.perf_counter()
    pages = 0
    for path in paths:
        with _open(path) as doc:
            for page in doc:
                page.get_text("text")
                pages += 1
    return pages, pages / (time.perf_counter() - started)


async def run(paths: list[Path], dim: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-demo-"))
    pg = start_embedded(folder / "pg", delete_on_stop=True)
    ollama = OllamaStandin(StandinState(dim=dim)).start()
    smtp = SmtpSink().start()
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, embed_dim=dim)
        settings = Settings(
            _env_file=None,
            database_url=pg.url,
            data_dir=folder / "data",
            ollama_url=ollama.url,
            embed_dim=dim,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            metrics_port=0,  # no operations listener: the demo reads no metrics
        )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        try:
            await drive(f"http://127.0.0.1:{port}", paths, smtp, ollama.state)
        finally:
            server.should_exit = True
            await task
    finally:
        smtp.stop()
        ollama.stop()
        pg.stop()


async def drive(base: str, paths: list[Path], smtp: SmtpSink, state: StandinState) -> None:
    floor_pages, floor_rate = raw_extract_pages_per_second(paths)
    async with httpx.AsyncClient(timeout=600) as http:
        gql = GraphQLClient(http, base)
        token = await sign_up(gql, smtp.inbox, "demo@example.com")
        pages = chunks = 0
        started = time.perf_counter()
        for path in paths:
            response = await gql.upload(path.name, path.read_bytes(), token=token)
            body = response.json()
            if body.get("errors"):
                print(f"  {path.name}: {body['errors'][0]['message']}")
                continue
            doc = body["data"]["uploadDocument"]
            pages += doc["pageCount"]
            chunks += doc["chunkCount"]
        elapsed = time.perf_counter() - started
        rate = pages / elapsed
        print(f"ingested {len(paths)} PDFs: {pages} pages, {chunks} chunks in {elapsed:.1f} s")
        print(f"{'':28}{'pages/s':>10}")
        print(
            f"{'raw PyMuPDF extraction':28}{floor_rate:>10.1f}   (floor, 1 core, {floor_pages} p)"
        )
        print(f"{'rag-gql uploadDocument':28}{rate:>10.1f}   ratio {rate / floor_rate:.2f}x")
        print(f"embed requests: {state.embed_requests}, texts embedded: {state.embed_inputs}")

        hits = await gql.data(
            "query($q: String!) { search(query: $q, k: 3) "
            "{ score page text document { filename } } }",
            {"q": QUESTION},
            token=token,
        )
        print(f"\nsearch: {QUESTION!r}")
        for hit in hits["search"]:
            snippet = " ".join(hit["text"].split())[:110]
            print(f"  {hit['score']:.3f} {hit['document']['filename']} p.{hit['page']}: {snippet}")

        state.token_delay = 0.01
        await stream_answer(gql, token)


async def stream_answer(gql: GraphQLClient, token: str) -> None:
    query = (
        "subscription($q: String!) { answer(question: $q, k: 4) { __typename "
        "... on AnswerSources { sources { page document { filename } } } "
        "... on AnswerToken { text } "
        "... on AnswerDone { promptTokens completionTokens timeToFirstTokenMs totalMs } "
        "... on AnswerError { code message } } }"
    )
    async with gql.websocket() as ws:
        await init(ws, {"authorization": f"Bearer {token}"})
        started = time.perf_counter()
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": query, "variables": {"q": QUESTION}},
                }
            )
        )
        tokens: list[str] = []
        first_at: float | None = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "complete":
                break
            event = frame["payload"]["data"]["answer"]
            if event["__typename"] == "AnswerToken":
                first_at = first_at or time.perf_counter()
                tokens.append(event["text"])
            elif event["__typename"] == "AnswerDone":
                done = event
    total = time.perf_counter() - started
    ttft = ((first_at or started) - started) * 1000
    print(
        f"\nanswer: {len(tokens)} AnswerToken events, first after {ttft:.0f} ms (client), "
        f"stream {total * 1000:.0f} ms; server says TTFT {done['timeToFirstTokenMs']:.0f} ms"
    )
    print("  " + "".join(tokens)[:300])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="folder of PDFs (../shared/corpus/get.sh)")
    parser.add_argument("--pdfs", type=int, default=20, help="how many PDFs (default 20)")
    parser.add_argument("--dim", type=int, default=768, help="embedding size (default 768)")
    args = parser.parse_args()
    paths = sorted(args.corpus.glob("*.pdf"))[: args.pdfs]
    if not paths:
        raise SystemExit(f"no PDFs in {args.corpus}")
    asyncio.run(run(paths, args.dim))


if __name__ == "__main__":
    main()
