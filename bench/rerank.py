"""What the reranking stage costs a search, and what its failures cost: latency, not quality.

Usage:
    python bench/rerank.py [--pages 400] [--searches 60] [--k 10] [--model-ms 0,50]

Runs everything on this machine: an embedded PostgreSQL (temporary), the app served by uvicorn
on loopback, the Ollama stand-in as embedder and as reranker (`/v1/rerank`: cosine of its own
embeddings, no model; `--model-ms` adds a fixed delay per rerank request, standing in for a
cross-encoder's time), an SMTP sink for the sign-up code. One workspace of `--pages` generated
pages (one chunk each). Each row is `--searches` HYBRID searches of distinct questions, k
`--k`, one at a time. The floor of a reranked row is the reranker's own time for the same
request (the client timed alone against the stand-in, at that delay).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.config import Settings  # noqa: E402 - after the path set-up above
from rag_gql.db import migrate  # noqa: E402
from rag_gql.db.embedded import start_embedded  # noqa: E402
from rag_gql.providers.rerank import RerankClient  # noqa: E402
from tests.conftest import LOOSE_GRAPHQL_LIMITS, LOOSE_RATE_LIMITS  # noqa: E402
from tests.support.accounts import sign_up  # noqa: E402
from tests.support.graphql_client import GraphQLClient  # noqa: E402
from tests.support.ollama_standin import OllamaStandin, StandinState  # noqa: E402
from tests.support.pdfs import make_pdf  # noqa: E402
from tests.support.serving import serve_client  # noqa: E402
from tests.support.smtp import SmtpSink  # noqa: E402
from tests.support.uploads import upload_ok  # noqa: E402

DIM = 256
WORDS = [
    "margin",
    "page",
    "font",
    "table",
    "figure",
    "caption",
    "index",
    "chapter",
    "section",
    "label",
    "reference",
    "citation",
    "package",
    "option",
    "command",
    "environment",
    "length",
    "counter",
    "box",
    "rule",
    "column",
    "header",
    "footer",
    "list",
    "item",
    "enumerate",
    "description",
    "verbatim",
    "listing",
    "float",
    "placement",
    "graphics",
    "color",
    "link",
    "url",
    "bibliography",
    "glossary",
    "appendix",
    "title",
    "author",
    "date",
    "abstract",
    "keyword",
    "theorem",
    "proof",
    "lemma",
]
SEARCH = "query($q: String!, $k: Int, $r: Boolean) { search(query: $q, k: $k, rerank: $r) " + (
    "{ score rerankScore reranked snippet page } }"
)


def pages(count: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=45)) + f" (page {i})." for i in range(count)]


def questions(count: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.sample(WORDS, 4)) for _ in range(count)]


def stats(samples: Sequence[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return f"{statistics.median(ms):8.1f} {p95:8.1f}"


async def row(
    gql: GraphQLClient, token: str, qs: Sequence[str], k: int, rerank: bool
) -> tuple[list[float], int]:
    """Times each search; returns the durations and how many came back reranked."""
    took: list[float] = []
    reranked = 0
    for q in qs:
        started = time.perf_counter()
        hits = (await gql.data(SEARCH, {"q": q, "k": k, "r": rerank}, token=token))["search"]
        took.append(time.perf_counter() - started)
        reranked += bool(hits and hits[0]["reranked"])
    return took, reranked


async def floor(url: str, docs: Sequence[str], qs: Sequence[str], k: int) -> list[float]:
    """The reranker alone: the same request (candidates' texts) from the client."""
    took: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        client = RerankClient(http, model="standin-reranker")
        for q in qs:
            started = time.perf_counter()
            await client.rerank(q, docs, top_n=k)
            took.append(time.perf_counter() - started)
    return took


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(17)
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-rerank-"))
    pg = start_embedded(folder / "pg", delete_on_stop=True)
    ollama = OllamaStandin(StandinState(dim=DIM)).start()
    smtp = SmtpSink().start()
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, embed_dim=DIM)
        base = Settings(
            _env_file=None,
            database_url=pg.url,
            data_dir=folder / "data",
            ollama_url=ollama.url,
            embed_dim=DIM,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            metrics_port=0,
            rerank_url=ollama.url,
            rerank_model="standin-reranker",
            rerank_timeout=args.timeout,
            rerank_attempts=1,
            rerank_breaker_threshold=3,
        ).model_copy(update=LOOSE_GRAPHQL_LIMITS | LOOSE_RATE_LIMITS)
        text = pages(args.pages, rng)
        state = ollama.state
        print(
            f"{args.pages} chunks in one workspace, HYBRID, k {args.k}, {args.searches} searches "
            f"per row, RERANK_CANDIDATES {args.candidates}, RERANK_TIMEOUT {args.timeout} s"
        )
        print(f"{'':44}{'p50 ms':>8} {'p95 ms':>8}  reranked")
        settings = base.model_copy(update={"rerank_candidates": args.candidates})
        async with serve_client(settings) as gql:
            token = await sign_up(gql, smtp.inbox, "bench@example.com")
            for start in range(0, len(text), 100):
                await upload_ok(gql, f"p{start}.pdf", make_pdf(text[start : start + 100]), token)
            warm = questions(args.searches, rng)
            await row(gql, token, warm, args.k, False)  # query embeddings cached, pages warm
            await row(gql, token, warm, args.k, True)
            qs = questions(args.searches, rng)
            await row(gql, token, qs, args.k, False)  # embeddings cached for every row below

            def show(title: str, took: Sequence[float], reranked: int | str) -> None:
                print(f"{title:44}{stats(took)}  {reranked}")

            took, n = await row(gql, token, qs, args.k, False)
            show("rerank: false (fused order)", took, n)
            for ms in args.model_ms:
                state.rerank_delay = ms / 1000
                took, n = await row(gql, token, qs, args.k, True)
                show(f"rerank: true, reranker +{ms} ms", took, n)
                docs = text[: args.candidates]
                show(
                    f"  floor: the reranker alone (+{ms} ms)",
                    await floor(ollama.url, docs, qs, args.k),
                    "",
                )
            state.rerank_delay = 0.0
            state.rerank_fail_status = 500
            took, n = await row(gql, token, qs[:3], args.k, True)
            show("reranker answers 500 (3, opening the circuit)", took, n)
            took, n = await row(gql, token, qs, args.k, True)
            show("circuit open: reranker skipped", took, n)
        state.rerank_fail_status = None
        slow = base.model_copy(
            update={"rerank_candidates": args.candidates, "rerank_breaker_threshold": 1000}
        )
        async with serve_client(slow) as gql:
            token = await sign_up(gql, smtp.inbox, "slow@example.com")
            await upload_ok(gql, "p.pdf", make_pdf(text[:100]), token)
            await row(gql, token, qs[:10], args.k, False)
            state.rerank_delay = args.timeout * 2
            took, n = await row(gql, token, qs[:10], args.k, True)
            show(f"reranker hangs: timed out at {args.timeout} s (10)", took, n)
            state.rerank_delay = 0.0
    finally:
        smtp.stop()
        ollama.stop()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--searches", type=int, default=60)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument(
        "--model-ms", type=lambda s: [int(x) for x in s.split(",")], default=[0, 50]
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
