"""Retrieval at scale: GraphQL `search` against its SQL floor, recall, and per-workspace plans.

Usage:
    python bench/search.py                        # 100k chunks, 100 workspaces
    python bench/search.py --n 1000000 --shared-buffers 8GB

Embeds real chunks of the corpus PDFs once with all-MiniLM-L6-v2 (cached as .npy), grows them
to N rows by small perturbations (Gaussian noise of `--noise` of the norm, renormalized), and
spreads the rows over 100 workspaces of Zipf-like sizes (the largest ~30 %, one ~1 %, many of
a few rows), inserted in shuffled order so each workspace's rows are scattered over the heap.
Then, on an embedded PostgreSQL with the real schema (alembic), it prints side by side:

- load, GIN and HNSW build times, table / TOAST / index sizes;
- whole table: HNSW top-10 against exact, p50/p95 and recall@10;
- the largest and the 1 % workspace: GraphQL `search(mode: VECTOR, k: 10)` over HTTP against
  the real app, the same SQL statement run with asyncpg (the floor: the statement
  `vector_ranked` builds, captured from SQLAlchemy, in one transaction with the same
  set_config calls, as `rag_gql_app`), their ratio, recall@10, the plan PostgreSQL uses, and
  where the app's time goes (auth, query embedding, SQL, loading the hits);
- HNSW `ef_search` against recall (whole table, the two workspaces);
- a sweep over workspaces of every size: the app's SELECT with a custom plan and with the
  generic plan a prepared statement may settle on, and the exact scan — as loaded (vectors
  in TOAST, rows scattered), with a covering index on (workspace_id) INCLUDE (id, embedding),
  after CLUSTER by workspace, with the vectors inline (STORAGE MAIN), inline and clustered;
  then the issue's goals beside the figures.

Query vectors are perturbed embeddings of held-out chunks (never stored). The app gets them
from the Ollama stand-in, whose embedder maps the query text "q17" to held-out vector 17.
Every loop is bounded; everything runs on loopback and a Unix socket.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import numpy.typing as npt
import pymupdf
import uvicorn
from pgvector import Vector
from pgvector.asyncpg import register_vector
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.app import create_app  # noqa: E402 - after the path set-up above
from rag_gql.config import Settings  # noqa: E402
from rag_gql.db import migrate  # noqa: E402
from rag_gql.db.models import User  # noqa: E402
from rag_gql.db.session import APP_ROLE  # noqa: E402
from rag_gql.repositories import chunks  # noqa: E402
from rag_gql.resources import Services  # noqa: E402
from rag_gql.services.chunking import chunk_pages  # noqa: E402
from rag_gql.services.retrieval import SearchMode  # noqa: E402
from tests.support.minilm import MINILM_DIM, load_minilm  # noqa: E402
from tests.support.ollama_standin import OllamaStandin, StandinState  # noqa: E402

Vectors = npt.NDArray[np.float32]
_open: Any = pymupdf.open

CHUNK_SIZE = 1000  # the app's defaults (Settings.chunk_size / chunk_overlap)
CHUNK_OVERLAP = 150


# --- real embeddings of the corpus, cached ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Corpus:
    """Real chunks and their MiniLM embeddings (unit norm, float32, one row per chunk)."""

    texts: list[str]
    vectors: Vectors


def corpus_chunks(pdfs: Sequence[Path]) -> list[str]:
    """Chunk texts of every page of `pdfs`, cut as the app cuts them."""
    texts: list[str] = []
    for path in pdfs:
        with _open(path) as doc:
            pages = [page.get_text("text") for page in doc]
        texts.extend(
            span.text for span in chunk_pages(pages, size=CHUNK_SIZE, overlap=CHUNK_OVERLAP)
        )
    return texts


def load_corpus(pdf_dir: Path, cache_dir: Path, *, count: int, seed: int) -> Corpus:
    """Returns `count` chunks sampled from `pdf_dir` with their embeddings, cached in `cache_dir`.

    The first run extracts, chunks and embeds (minutes on a few cores); later runs read the
    cache, keyed by the PDFs' names and sizes, the chunking, `count` and `seed`.
    """
    pdfs = sorted(pdf_dir.glob("*.pdf"))
    if not pdfs:
        raise SystemExit(f"no PDFs in {pdf_dir}")
    key = hashlib.sha256(
        json.dumps(
            [[p.name, p.stat().st_size] for p in pdfs] + [CHUNK_SIZE, CHUNK_OVERLAP, count, seed]
        ).encode()
    ).hexdigest()[:16]
    vectors_path = cache_dir / f"minilm-{key}.npy"
    texts_path = cache_dir / f"minilm-{key}.json"
    if vectors_path.is_file() and texts_path.is_file():
        texts: list[str] = json.loads(texts_path.read_text())
        return Corpus(texts, np.load(vectors_path).astype(np.float32))
    started = time.perf_counter()
    every = corpus_chunks(pdfs)
    texts = random.Random(seed).sample(every, min(count, len(every)))
    print(f"embedding {len(texts)} of {len(every)} chunks of {len(pdfs)} PDFs with MiniLM ...")
    embed = load_minilm(batch_size=32)
    parts: list[Vectors] = []
    for start in range(0, len(texts), 256):
        parts.append(np.asarray(embed(texts[start : start + 256]), dtype=np.float32))
        done = start + len(parts[-1])
        print(f"  {done}/{len(texts)} in {time.perf_counter() - started:.0f} s", flush=True)
    vectors = np.concatenate(parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path, vectors)
    texts_path.write_text(json.dumps(texts))
    return Corpus(texts, vectors)


# --- tenants and rows ---------------------------------------------------------------------------

WORKSPACES = 100
CHUNKS_PER_DOCUMENT = 40
CHUNK_COLUMNS = (
    "workspace_id",
    "document_id",
    "ordinal",
    "page",
    "char_start",
    "char_end",
    "text",
    "embedding",
)


def workspace_sizes(n: int, *, count: int = WORKSPACES, top_share: float = 0.30) -> list[int]:
    """Zipf-like sizes, largest first, summing to `n`, each at least 1.

    Weights are e^(-βk)/k for rank k, with β solved so that the largest holds `top_share`:
    a few large workspaces, one of ~1 %, and about half of them under 0.05 % (tiny).
    """
    ranks = np.arange(1, count + 1, dtype=np.float64)
    low, high = 0.0, 1.0
    weights = 1.0 / ranks
    for _ in range(60):  # bisection on β: a larger β concentrates more rows on rank 1
        beta = (low + high) / 2
        weights = np.exp(-beta * ranks) / ranks
        if weights[0] / weights.sum() < top_share:
            low = beta
        else:
            high = beta
    sizes = np.maximum(1, np.floor(weights / weights.sum() * n)).astype(np.int64)
    sizes[0] += n - int(sizes.sum())
    return [int(s) for s in sizes]


def perturb(vectors: Vectors, noise: float, rng: np.random.Generator) -> Vectors:
    """`vectors` plus Gaussian noise of norm ≈ `noise` (their norm is 1), renormalized."""
    sigma = noise / np.sqrt(vectors.shape[1])
    out = vectors + rng.normal(0.0, sigma, vectors.shape).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


@dataclass(frozen=True, slots=True)
class Tenants:
    """The workspaces, largest first, and their row counts."""

    ids: list[uuid.UUID]
    sizes: list[int]


async def load_rows(
    conn: Any, corpus: Corpus, *, n: int, noise: float, seed: int, batch: int = 20_000
) -> Tenants:
    """Inserts 100 workspaces, their documents and `n` chunks with COPY, as the table owner.

    Rows come in shuffled workspace order (each workspace's rows scattered over the heap); a
    row's vector is a random corpus vector perturbed by `noise`, its text that chunk's text.
    `conn` must have pgvector's binary codec registered.
    """
    rng = np.random.default_rng(seed)
    sizes = workspace_sizes(n)
    ids = [uuid.uuid4() for _ in sizes]
    await conn.copy_records_to_table(
        "workspace",
        records=[(ws, f"bench {rank}", False) for rank, ws in enumerate(ids)],
        columns=("id", "name", "personal"),
    )
    documents: list[list[uuid.UUID]] = []
    records: list[tuple[object, ...]] = []
    for rank, (ws, size) in enumerate(zip(ids, sizes, strict=True)):
        count = -(-size // CHUNKS_PER_DOCUMENT)
        documents.append([uuid.uuid4() for _ in range(count)])
        for d, doc in enumerate(documents[-1]):
            chunks = min(CHUNKS_PER_DOCUMENT, size - d * CHUNKS_PER_DOCUMENT)
            sha = hashlib.sha256(f"{rank}/{d}".encode()).hexdigest()
            name = f"ws{rank}-doc{d}.pdf"
            records.append((doc, ws, name, sha, "application/pdf", 1000, chunks, chunks, "READY"))
    await conn.copy_records_to_table(
        "document",
        records=records,
        columns=(
            "id",
            "workspace_id",
            "filename",
            "sha256",
            "media_type",
            "size_bytes",
            "page_count",
            "chunk_count",
            "status",
        ),
    )
    row_ws = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    order = np.argsort(row_ws, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_in_ws = np.empty(n, dtype=np.int64)
    rank_in_ws[order] = np.arange(n) - starts[row_ws[order]]
    source = rng.integers(0, len(corpus.texts), n)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        vectors = perturb(corpus.vectors[source[start:stop]], noise, rng)
        rows = []
        for i in range(start, stop):
            w, r = int(row_ws[i]), int(rank_in_ws[i])
            ordinal = r % CHUNKS_PER_DOCUMENT
            text = corpus.texts[source[i]]
            # page = ordinal + 1: no two hits are neighbours on one page, so the app's
            # merge of adjacent chunks leaves the top-10 whole and comparable with SQL.
            doc = documents[w][r // CHUNKS_PER_DOCUMENT]
            rows.append((ids[w], doc, ordinal, ordinal + 1, 0, len(text), text, vectors[i - start]))
        await conn.copy_records_to_table("chunk", records=rows, columns=CHUNK_COLUMNS)
    return Tenants(ids, sizes)


# --- database -----------------------------------------------------------------------------------

HNSW_INDEX = "ix_chunk_embedding_hnsw"
CREATE_HNSW = f"CREATE INDEX {HNSW_INDEX} ON chunk USING hnsw (embedding vector_cosine_ops)"
CREATE_GIN = "CREATE INDEX ix_chunk_tsv ON chunk USING gin (tsv)"
# Exact top-k: ordering by an expression no index provides, so PostgreSQL computes every
# distance of the rows the WHERE clause leaves (through whichever index or scan it likes).
EXACT_ALL = "SELECT id, (embedding <=> $1::vector) + 0 AS distance FROM chunk ORDER BY 2 LIMIT $2"
HNSW_ALL = (
    "SELECT id, embedding <=> $1::vector AS distance FROM chunk "
    "ORDER BY embedding <=> $1::vector LIMIT $2"
)
EXACT_WS = (
    "SELECT id, (embedding <=> $1::vector) + 0 AS distance FROM chunk "
    "WHERE workspace_id = $2 ORDER BY 2 LIMIT $3"
)
SET_WORKSPACE = "SELECT set_config('app.workspace_id', $1, true)"
SET_EF_SEARCH = "SELECT set_config('hnsw.ef_search', $1, true)"
COVERING_INDEX = "ix_bench_chunk_workspace_id_cover"
SIZES = """
SELECT pg_relation_size('chunk'),
       pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE relname = 'chunk')),
       pg_relation_size('ix_chunk_embedding_hnsw'),
       pg_relation_size('ix_chunk_tsv'),
       pg_relation_size('ix_chunk_workspace_id'),
       (SELECT count(*) FILTER (WHERE pg_column_toast_chunk_id(embedding) IS NOT NULL)
          FROM chunk)
"""


async def start_postgres(folder: Path, shared_buffers: str) -> Any:
    """Starts the embedded server in `folder`, restarting it once to apply `shared_buffers`."""
    from rag_gql.db.embedded import start_embedded

    if shared_buffers:
        if not re.fullmatch(r"\d+(kB|MB|GB)", shared_buffers):
            raise SystemExit(f"--shared-buffers: not a size like 2GB: {shared_buffers!r}")
        pg = await asyncio.to_thread(start_embedded, folder, delete_on_stop=False)
        conn = await asyncpg.connect(dsn(pg.url))
        try:  # ALTER SYSTEM takes no bind parameters; the value was checked above
            await conn.execute(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
        finally:
            await conn.close()
        await asyncio.to_thread(pg.stop)
    return await asyncio.to_thread(start_embedded, folder, delete_on_stop=True)


def dsn(url: str) -> str:
    """asyncpg's form of the app's database URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def build_indexes(conn: Any, memory: str) -> tuple[float, float]:
    """Builds the GIN and HNSW indexes dropped before the load; returns both times in s."""
    started = time.perf_counter()
    await conn.execute(CREATE_GIN)
    gin = time.perf_counter() - started
    await conn.fetch("SELECT set_config('maintenance_work_mem', $1, false)", memory)
    started = time.perf_counter()
    await conn.execute(CREATE_HNSW)
    hnsw = time.perf_counter() - started
    await conn.execute("VACUUM ANALYZE chunk")
    await conn.execute("VACUUM ANALYZE document")
    return gin, hnsw


def megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


async def describe_sizes(conn: Any, n: int) -> str:
    heap, toast, hnsw, gin, btree, toasted = await conn.fetchrow(SIZES)
    return (
        f"sizes: heap {megabytes(heap)}, TOAST {megabytes(toast)} "
        f"({toasted / n:.0%} of vectors stored out of line), HNSW {megabytes(hnsw)}, "
        f"GIN {megabytes(gin)}, btree(workspace_id) {megabytes(btree)}"
    )


# --- timing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """p50 and p95 of a list of milliseconds."""

    p50: float
    p95: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            return cls(float("nan"), float("nan"))
        return cls(float(np.percentile(samples, 50)), float(np.percentile(samples, 95)))

    def __str__(self) -> str:
        return f"{self.p50:6.2f} /{self.p95:6.2f}"


def recall(found: Sequence[int], truth: Sequence[int]) -> float:
    """|found ∩ truth| / |truth| (a workspace may hold fewer than k rows: then |truth| < k)."""
    return len(set(found) & set(truth)) / len(truth) if truth else 1.0


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


Statement = tuple[str, tuple[Any, ...]]


async def run_in_transaction(
    conn: Any, setup: Sequence[Statement], query: Statement
) -> tuple[list[tuple[int, float]], float, float]:
    """Runs `setup` then `query` in one transaction.

    Returns ((id, distance) nearest first, transaction ms, query ms) — the query time is the
    client's round trip for that one statement.
    """
    started = time.perf_counter()
    async with conn.transaction():
        for sql, args in setup:
            await conn.fetch(sql, *args)
        before = time.perf_counter()
        rows = await conn.fetch(query[0], *query[1])
        query_ms = (time.perf_counter() - before) * 1000
    total_ms = (time.perf_counter() - started) * 1000
    # vector_ranked sorts too: relaxed_order may return neighbours slightly out of order.
    ranked = sorted(((int(r[0]), float(r[1])) for r in rows), key=lambda row: row[1])
    return ranked, total_ms, query_ms


# --- the app's SQL ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppSql:
    """The statements `chunks.vector_ranked` sends inside `Database.transaction(workspace)`.

    Captured from SQLAlchemy with a probe workspace and vector, replayed with asyncpg for
    other ones: the last statement is the ranked SELECT, the others set the tenant and the
    HNSW settings.
    """

    statements: list[Statement]
    probe_workspace: uuid.UUID
    probe_vector: str

    def bind(self, workspace: uuid.UUID, vector: str) -> tuple[list[Statement], Statement]:
        """(setup statements, SELECT) for `workspace` and `vector` (pgvector text)."""

        def swap(value: object) -> object:
            if value == self.probe_vector:
                return vector
            if value == self.probe_workspace:
                return workspace
            if value == str(self.probe_workspace):
                return str(workspace)
            return value

        bound = [(sql, tuple(swap(v) for v in args)) for sql, args in self.statements]
        return bound[:-1], bound[-1]


def vector_text(values: Sequence[float] | Vectors) -> str:
    """A vector as the app sends it: pgvector's text of the floats (JSON floats from Ollama)."""
    text = Vector._to_db(values.tolist() if isinstance(values, np.ndarray) else list(values))
    if text is None:
        raise ValueError("no vector")
    return text


async def capture_app_sql(url: str, *, dim: int, ef_search: int, k: int) -> AppSql:
    """Runs `vector_ranked` once through the app's `Database` and records what it sent."""
    from sqlalchemy import event

    from rag_gql.db import Database

    probe_workspace = uuid.uuid4()
    probe = [1.0 / np.sqrt(dim)] * dim
    seen: list[Statement] = []
    db = Database(url)

    def record(
        conn: object, cursor: object, sql: str, args: Any, context: object, many: bool
    ) -> None:
        seen.append((sql, tuple(args or ())))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        async with db.transaction(probe_workspace) as session:
            await chunks.vector_ranked(
                session, workspace_id=probe_workspace, embedding=probe, limit=k, ef_search=ef_search
            )
    finally:
        await db.dispose()
    app = AppSql(seen, probe_workspace, vector_text(probe))
    select = seen[-1] if seen else ("", ())
    if app.probe_vector not in select[1] or not any(
        a in (probe_workspace, str(probe_workspace)) for a in select[1]
    ):
        raise SystemExit(f"unexpected statements from vector_ranked: {seen!r}"[:2000])
    return app


def plan_summary(plan: Any) -> str:
    """`EXPLAIN (FORMAT JSON)` output as its node chain, e.g. `Limit > Index Scan(ix_…)`."""
    document = json.loads(plan) if isinstance(plan, str) else plan
    node = document[0]["Plan"]
    parts: list[str] = []
    for _ in range(20):  # plans here are a short chain; bounded anyway
        name = str(node["Node Type"])
        if "Index Name" in node:
            name += f"({node['Index Name']})"
        parts.append(name)
        children = node.get("Plans") or []
        if not children:
            break
        node = children[0]
    return " > ".join(parts)


def literal(value: object) -> str:
    """A SQL literal for values this bench made itself (numbers, uuids, pgvector text)."""
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


async def app_plan(
    conn: Any, app: AppSql, workspace: uuid.UUID, vectors: Sequence[str], mode: str = "auto"
) -> str:
    """The plan of the app's SELECT once prepared and run 6 times under `plan_cache_mode`.

    A driver's prepared statement (asyncpg, under SQLAlchemy, prepares every statement) gets,
    from its 6th run on, a generic plan (one for every workspace, estimated for an average
    one) when PostgreSQL finds it no costlier than the custom plans so far (mode `auto`).
    """
    setup, (sql, _) = app.bind(workspace, vectors[0])
    async with conn.transaction():
        for statement in setup:
            await conn.fetch(statement[0], *statement[1])
        await conn.fetch("SELECT set_config('plan_cache_mode', $1, true)", mode)
        await conn.execute("PREPARE bench_app_plan AS " + sql)
        try:
            execute = ""
            for vector in vectors[:6]:
                values = ", ".join(literal(a) for a in app.bind(workspace, vector)[1][1])
                execute = f"EXECUTE bench_app_plan({values})"
                await conn.execute(execute)
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + execute)
        finally:
            await conn.execute("DEALLOCATE bench_app_plan")
    return short_plan(plan_summary(plan))


# --- the app over HTTP --------------------------------------------------------------------------

SEARCH_QUERY = (
    "query($q: String!, $k: Int!) { search(query: $q, k: $k, mode: VECTOR) "
    "{ score page text snippet document { id filename } } }"
)


def query_embedder(queries: Vectors) -> Callable[[list[str]], list[list[float]]]:
    """The stand-in's embedder: "q17" → held-out query vector 17; anything else → e₀."""
    rows: list[list[float]] = queries.tolist()
    fallback = [1.0] + [0.0] * (queries.shape[1] - 1)

    def embed(texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for text in texts:
            number = text[1:]
            out.append(rows[int(number)] if text[:1] == "q" and number.isdigit() else fallback)
        return out

    return embed


async def add_reader(conn: Any, workspace: uuid.UUID) -> uuid.UUID:
    """A verified user who may read `workspace` (VIEWER), inserted as the owner; its id."""
    user = uuid.uuid4()
    await conn.execute(
        'INSERT INTO "user" (id, email, password_hash, verified_at) VALUES ($1, $2, $3, now())',
        user,
        f"{user.hex[:12]}@bench.example",
        "not-a-password-hash",
    )
    await conn.execute(
        "INSERT INTO membership (workspace_id, user_id, role) VALUES ($1, $2, 'VIEWER')",
        workspace,
        user,
    )
    return user


async def graphql_search(
    http: httpx.AsyncClient, token: str, workspace: uuid.UUID, query: int, k: int
) -> tuple[list[tuple[str, int]], float]:
    """One `search` over HTTP; returns ((document id, page) per hit, ms until the body is in)."""
    headers = {"Authorization": f"Bearer {token}", "X-Workspace-Id": str(workspace)}
    payload = {"query": SEARCH_QUERY, "variables": {"q": f"q{query}", "k": k}}
    started = time.perf_counter()
    response = await http.post("/graphql", json=payload, headers=headers)
    ms = (time.perf_counter() - started) * 1000
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"search failed: {response.status_code} {response.text[:500]}")
    return [(h["document"]["id"], int(h["page"])) for h in body["data"]["search"]], ms


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


# --- measurements -------------------------------------------------------------------------------


@dataclass
class Bench:
    """What the measurements share: connections, the app, the queries and the data."""

    owner: Any  # asyncpg connection as the table owner (superuser: no row-level security)
    floor: Any  # asyncpg connection that did `SET ROLE rag_gql_app`, as the app's pool does
    app_sql: AppSql
    services: Services
    http: httpx.AsyncClient
    tenants: Tenants
    queries: list[list[float]]  # as the app receives them from Ollama
    texts: list[str]  # the same, as pgvector text
    k: int
    ef_search: int

    def app_statements(
        self, workspace: uuid.UUID, query: int, mode: str | None = None, ef: int | None = None
    ) -> tuple[list[Statement], Statement]:
        """The app's statements; with `mode` under that `plan_cache_mode`, with `ef` under
        that `hnsw.ef_search` (a later set_config in the transaction wins)."""
        setup, select = self.app_sql.bind(workspace, self.texts[query])
        if mode is not None:
            setup.append(("SELECT set_config('plan_cache_mode', $1, true)", (mode,)))
        if ef is not None:
            setup.append((SET_EF_SEARCH, (str(ef),)))
        return setup, select

    def exact_statements(
        self, workspace: uuid.UUID, query: int
    ) -> tuple[list[Statement], Statement]:
        setup = [(SET_WORKSPACE, (str(workspace),))]
        return setup, (EXACT_WS, (self.texts[query], workspace, self.k))


@dataclass(frozen=True, slots=True)
class Strategy:
    """One way of answering the queries: its SELECT's latency, transaction latency, results."""

    select: Stats
    transaction: Stats
    results: list[list[int]]
    plan: str


Statements = Callable[[int], tuple[list[Statement], Statement]]


async def run_strategy(conn: Any, statements: Statements, count: int, plan: str) -> Strategy:
    """Runs every query once to warm up, then once timed."""
    for i in range(count):
        await run_in_transaction(conn, *statements(i))
    selects: list[float] = []
    transactions: list[float] = []
    results: list[list[int]] = []
    for i in range(count):
        ranked, total_ms, select_ms = await run_in_transaction(conn, *statements(i))
        selects.append(select_ms)
        transactions.append(total_ms)
        results.append([cid for cid, _ in ranked])
    return Strategy(Stats.of(selects), Stats.of(transactions), results, plan)


def short_plan(chain: str) -> str:
    """Plan chain in a few words: `sort bitmap(ws)`, `hnsw`, `index-only(cover)`…"""
    for long, short in (
        ("Limit > ", ""),
        ("Result > ", ""),
        ("Gather Merge > ", "parallel "),
        ("Sort > ", "sort "),
        (f"Index Scan({HNSW_INDEX})", "hnsw"),
        ("Bitmap Heap Scan > Bitmap Index Scan(ix_chunk_workspace_id)", "bitmap(ws)"),
        ("Index Scan(ix_chunk_workspace_id)", "btree(ws)"),
        (f"Index Only Scan({COVERING_INDEX})", "index-only(cover)"),
        (f"Index Scan({COVERING_INDEX})", "btree(cover)"),
        ("Seq Scan", "seq"),
    ):
        chain = chain.replace(long, short)
    return chain


async def exact_plan(bench: Bench, workspace: uuid.UUID) -> str:
    setup, (sql, args) = bench.exact_statements(workspace, 0)
    async with bench.floor.transaction():
        for statement in setup:
            await bench.floor.fetch(statement[0], *statement[1])
        plan = await bench.floor.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return short_plan(plan_summary(plan))


@dataclass(frozen=True, slots=True)
class WholeTable:
    hnsw: Strategy
    exact: Strategy


async def whole_table_hnsw(bench: Bench, ef_search: int) -> Strategy:
    """HNSW top-k over every row (no workspace filter), as the owner."""
    ef = [(SET_EF_SEARCH, (str(ef_search),))]
    plan = await bench.owner.fetchval("EXPLAIN (FORMAT JSON) " + HNSW_ALL, bench.texts[0], bench.k)
    return await run_strategy(
        bench.owner,
        lambda i: (ef, (HNSW_ALL, (bench.texts[i], bench.k))),
        len(bench.texts),
        short_plan(plan_summary(plan)),
    )


async def measure_whole_table(bench: Bench) -> WholeTable:
    """HNSW against exact top-k over every row (no workspace filter), as the owner."""
    count = len(bench.texts)
    hnsw = await whole_table_hnsw(bench, bench.ef_search)
    plan = await bench.owner.fetchval("EXPLAIN (FORMAT JSON) " + EXACT_ALL, bench.texts[0], bench.k)
    exact = await run_strategy(
        bench.owner,
        lambda i: ([], (EXACT_ALL, (bench.texts[i], bench.k))),
        count,
        short_plan(plan_summary(plan)),
    )
    return WholeTable(hnsw, exact)


@dataclass(frozen=True, slots=True)
class Served:
    """A workspace searched through GraphQL and through the floor, alternately."""

    graphql: Stats
    floor: Strategy
    agreeing: int  # queries whose GraphQL hits are the floor's rows


async def measure_served(bench: Bench, workspace: uuid.UUID, token: str) -> Served:
    """GraphQL `search` over HTTP against the app's SQL with asyncpg, interleaved.

    One untimed pass warms both; in the timed pass they alternate which goes first.
    """
    count = len(bench.texts)
    for i in range(count):
        await graphql_search(bench.http, token, workspace, i, bench.k)
        await run_in_transaction(bench.floor, *bench.app_statements(workspace, i))
    graphql: list[float] = []
    selects: list[float] = []
    transactions: list[float] = []
    results: list[list[int]] = []
    hits: list[list[tuple[str, int]]] = []
    for i in range(count):
        statements = bench.app_statements(workspace, i)
        if i % 2:  # alternate which goes first: neither always finds the other's cache
            ranked, total_ms, select_ms = await run_in_transaction(bench.floor, *statements)
            found, ms = await graphql_search(bench.http, token, workspace, i, bench.k)
        else:
            found, ms = await graphql_search(bench.http, token, workspace, i, bench.k)
            ranked, total_ms, select_ms = await run_in_transaction(bench.floor, *statements)
        graphql.append(ms)
        selects.append(select_ms)
        transactions.append(total_ms)
        results.append([cid for cid, _ in ranked])
        hits.append(found)
    places = {
        int(r[0]): (str(r[1]), int(r[2]))
        for r in await bench.owner.fetch(
            "SELECT id, document_id::text, page FROM chunk WHERE id = ANY($1::bigint[])",
            sorted({cid for ids in results for cid in ids}),
        )
    }
    agreeing = sum(
        {places[cid] for cid in ids} == set(found) for ids, found in zip(results, hits, strict=True)
    )
    custom = await app_plan(bench.floor, bench.app_sql, workspace, bench.texts, "force_custom_plan")
    auto = await app_plan(bench.floor, bench.app_sql, workspace, bench.texts)
    plan = custom if custom == auto else f"{custom} -> {auto}"
    floor = Strategy(Stats.of(selects), Stats.of(transactions), results, plan)
    return Served(Stats.of(graphql), floor, agreeing)


async def _vector_ranked(bench: Bench, workspace: uuid.UUID, query: int) -> list[int]:
    async with bench.services.db.transaction(workspace) as session:
        ranked = await chunks.vector_ranked(
            session,
            workspace_id=workspace,
            embedding=bench.queries[query],
            limit=bench.k,
            ef_search=bench.ef_search,
        )
    return [cid for cid, _ in ranked]


async def _load(bench: Bench, workspace: uuid.UUID, ids: list[int], query: int) -> None:
    async with bench.services.db.transaction(workspace) as session:
        await chunks.load(session, workspace_id=workspace, ids=ids, query=f"q{query}")


PART_AUTH = "authenticate (1 tx, 2 SELECTs)"
PART_EMBED = "embed the query (stand-in HTTP)"
PART_SEARCH = "RetrievalService.search (the 3 above)"


async def breakdown(bench: Bench, workspace: uuid.UUID, token: str) -> dict[str, Stats]:
    """Where a search's time goes, timed piece by piece through the app's own objects."""
    services = bench.services
    principal = await services.auth.authenticate(token, workspace)
    parts: dict[str, list[float]] = {
        PART_AUTH: [],
        PART_EMBED: [],
        "vector_ranked (SQLAlchemy, 1 tx)": [],
        "load hits + ts_headline (1 tx)": [],
        PART_SEARCH: [],
    }
    names = list(parts)
    for i in range(len(bench.texts)):
        text = f"q{i}"
        parts[names[0]].append(await timed(partial(services.auth.authenticate, token, workspace)))
        parts[names[1]].append(await timed(partial(services.ollama.embed, [text])))
        started = time.perf_counter()
        ids = await _vector_ranked(bench, workspace, i)
        parts[names[2]].append((time.perf_counter() - started) * 1000)
        parts[names[3]].append(await timed(partial(_load, bench, workspace, ids, i)))
        search = partial(
            services.retrieval.search, principal, text, bench.k, mode=SearchMode.VECTOR
        )
        parts[names[4]].append(await timed(search))
    return {name: Stats.of(samples) for name, samples in parts.items()}


# --- per-workspace strategies -------------------------------------------------------------------

SWEEP_SHARES = (0.30, 0.10, 0.03, 0.01, 0.003, 0.001, 0.0003)
GOAL_RATIO = 1.5
GOAL_RECALL = 0.95
GOAL_SMALL_P95_MS = 2.0


def sweep_picks(sizes: Sequence[int]) -> list[int]:
    """Workspaces (by rank) nearest each share in SWEEP_SHARES, and the smallest."""
    n = sum(sizes)
    picks: list[int] = []
    for share in SWEEP_SHARES:
        best = min(range(len(sizes)), key=lambda j: abs(sizes[j] - share * n))
        if best not in picks:
            picks.append(best)
    smallest = min(range(len(sizes)), key=lambda j: (sizes[j], -j))
    if smallest not in picks:
        picks.append(smallest)
    return picks


@dataclass(frozen=True, slots=True)
class Row:
    """A workspace's strategies: the app's SELECT with a custom and with a generic plan, the
    exact scan, and which plan the plan cache settles on (`auto`)."""

    custom: Strategy
    generic: Strategy
    exact: Strategy
    auto: str


Phase = dict[int, Row]  # by workspace rank


async def sweep(bench: Bench, picks: Sequence[int]) -> Phase:
    """Every strategy in each picked workspace, as `rag_gql_app`."""
    count = len(bench.texts)
    out: Phase = {}
    for rank in picks:
        ws = bench.tenants.ids[rank]
        exact = await run_strategy(
            bench.floor, partial(bench.exact_statements, ws), count, await exact_plan(bench, ws)
        )
        plans = {
            mode: await app_plan(bench.floor, bench.app_sql, ws, bench.texts, mode)
            for mode in ("force_custom_plan", "force_generic_plan", "auto")
        }
        custom, generic = [
            await run_strategy(
                bench.floor, partial(bench.app_statements, ws, mode=mode), count, plans[mode]
            )
            for mode in ("force_custom_plan", "force_generic_plan")
        ]
        if plans["auto"] == custom.plan:
            auto = "custom"
        else:
            auto = "generic" if plans["auto"] == generic.plan else plans["auto"]
        out[rank] = Row(custom, generic, exact, auto)
    return out


def mean_recall(results: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> float:
    return mean([recall(r, t) for r, t in zip(results, truth, strict=True)])


def print_phase(title: str, phase: Phase, bench: Bench, truth: dict[int, list[list[int]]]) -> None:
    """One table: a line per workspace, SELECT p50 / p95 in ms, recall@k against exact."""
    n = sum(bench.tenants.sizes)
    print(f"\n{title}")
    head = f"{'plan':<23}{'p50 /   p95':>14}{'recall':>7}"
    print(
        f"  {'':>15}{'':>8}   {'app SELECT, custom plan':<44}   {'app SELECT, generic plan':<44}"
        f"   {'exact':<37}  cache"
    )
    print(f"  {'workspace':>15}{'rows':>8}   {head}   {head}   {head[:37]}")
    for rank, row in phase.items():
        size = bench.tenants.sizes[rank]
        cells = [
            f"{s.plan:<23}{s.select!s:>14}{mean_recall(s.results, truth[rank]):>7.3f}"
            for s in (row.custom, row.generic)
        ]
        print(
            f"  {f'#{rank} {size / n:.2%}':>15}{size:>8,}   {cells[0]}   {cells[1]}   "
            f"{row.exact.plan:<23}{row.exact.select!s:>14}  {row.auto}"
        )


def exact_threshold(phase: Phase, sizes: Sequence[int]) -> str:
    """Which picked workspaces an exact scan serves within the p95 goal."""
    rows = sorted((sizes[rank], row.exact.select.p95) for rank, row in phase.items())
    within = [size for size, p95 in rows if p95 <= GOAL_SMALL_P95_MS]
    if not within:
        return "no picked workspace"
    miss = min(
        (size for size, p95 in rows if p95 > GOAL_SMALL_P95_MS and size > max(within)), default=None
    )
    return f"up to {max(within):,} rows" + (f", not {miss:,}" if miss is not None else "")


EF_SWEEP = (40, 100, 200, 400)


async def ef_sweep(
    bench: Bench, ranks: Sequence[int], truth: dict[int, list[list[int]]], whole: WholeTable
) -> None:
    """Prints SELECT p50 / p95 and recall@k for several `hnsw.ef_search` (custom plans)."""
    ids = bench.tenants.ids
    print(f"\nHNSW ef_search (SELECT p50 / p95 ms, recall@{bench.k}; custom plans, as loaded):")
    print(f"  {'ef_search':>9}{'whole table':>28}" + "".join(f"{'#' + str(r):>28}" for r in ranks))
    for ef in EF_SWEEP:
        cells = []
        hnsw = await whole_table_hnsw(bench, ef)
        cells.append(f"{hnsw.select!s:>20}{mean_recall(hnsw.results, whole.exact.results):>8.3f}")
        for rank in ranks:
            statements = partial(bench.app_statements, ids[rank], mode="force_custom_plan", ef=ef)
            got = await run_strategy(bench.floor, statements, len(bench.texts), "")
            cells.append(f"{got.select!s:>20}{mean_recall(got.results, truth[rank]):>8.3f}")
        print(f"  {ef:>9}" + "".join(cells))


# --- the run ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


async def serve_app(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], str, Any]:
    """Starts the real app with uvicorn on a loopback port; (server, task, base URL, app)."""
    app = create_app(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    for _ in range(3000):  # up to 30 s; uvicorn exposes a flag, not an event
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        raise SystemExit("the app did not start")
    return server, task, f"http://127.0.0.1:{port}", app


async def run(args: argparse.Namespace) -> None:
    corpus = await asyncio.to_thread(
        load_corpus, args.pdfs, args.cache_dir, count=args.base + args.queries, seed=args.seed
    )
    if len(corpus.texts) < args.base + args.queries:
        raise SystemExit(f"the corpus has only {len(corpus.texts)} chunks")
    stored = Corpus(corpus.texts[: args.base], corpus.vectors[: args.base])
    held_out = corpus.vectors[args.base : args.base + args.queries]
    queries = perturb(held_out, args.noise, np.random.default_rng(args.seed + 1))
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-search-"))
    pg = await start_postgres(folder / "pg", args.shared_buffers)
    standin = OllamaStandin(StandinState(dim=MINILM_DIM, embedder=query_embedder(queries)))
    standin.start()
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, embed_dim=MINILM_DIM)
        settings = Settings(
            _env_file=None,
            database_url=pg.url,
            data_dir=folder / "data",
            ollama_url=standin.url,
            embed_dim=MINILM_DIM,
            jwt_secret=SecretStr(secrets.token_urlsafe(32)),
        )
        owner = await asyncpg.connect(dsn(pg.url))
        try:
            await measure(args, settings, owner, stored, queries)
        finally:
            await owner.close()
    finally:
        standin.stop()
        pg.stop()


async def measure(
    args: argparse.Namespace, settings: Settings, owner: Any, stored: Corpus, queries: Vectors
) -> None:
    n = args.n
    version = await owner.fetchval("SHOW server_version")
    pgvector = await owner.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    buffers = await owner.fetchval("SHOW shared_buffers")
    print(
        f"rag-gql search bench: {n:,} chunks in {WORKSPACES} workspaces; vectors: MiniLM "
        f"{MINILM_DIM}-d of {len(stored.texts):,} real chunks + noise {args.noise:.0%} of the "
        f"norm; {len(queries)} held-out queries, k={args.k}"
    )
    print(
        f"PostgreSQL {version}, pgvector {pgvector}, shared_buffers {buffers}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )

    # Load with the vector indexes dropped, then build them (as a bulk load would).
    await owner.execute(f"DROP INDEX {HNSW_INDEX}")
    await owner.execute("DROP INDEX ix_chunk_tsv")
    loader = await asyncpg.connect(dsn(pg_url(settings)))
    await register_vector(loader)
    started = time.perf_counter()
    try:
        tenants = await load_rows(loader, stored, n=n, noise=args.noise, seed=args.seed)
    finally:
        await loader.close()
    load_s = time.perf_counter() - started
    gin_s, hnsw_s = await build_indexes(owner, args.build_memory)
    small = min(range(WORKSPACES), key=lambda j: abs(tenants.sizes[j] - 0.01 * n))
    sizes = tenants.sizes
    print(
        f"load: {n:,} rows by COPY in {load_s:.1f} s ({n / load_s:,.0f} rows/s); "
        f"GIN(tsv) {gin_s:.1f} s; HNSW {hnsw_s:.1f} s (m=16, ef_construction=64, "
        f"maintenance_work_mem {args.build_memory})"
    )
    print(await describe_sizes(owner, n))
    print(
        f"workspaces: largest {sizes[0]:,} ({sizes[0] / n:.1%}), 1 % one #{small} "
        f"{sizes[small]:,}, median {int(np.median(sizes)):,}, "
        f"{sum(s < 0.0005 * n for s in sizes)} under 0.05 %, smallest {sizes[-1]:,}"
    )

    server, task, base_url, app = await serve_app(settings)
    try:
        services: Services = app.state.services
        floor = await asyncpg.connect(dsn(pg_url(settings)))
        await floor.execute(f'SET ROLE "{APP_ROLE}"')
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            bench = Bench(
                owner=owner,
                floor=floor,
                app_sql=await capture_app_sql(
                    pg_url(settings), dim=MINILM_DIM, ef_search=settings.hnsw_ef_search, k=args.k
                ),
                services=services,
                http=http,
                tenants=tenants,
                queries=queries.tolist(),
                texts=[vector_text(q) for q in queries],
                k=args.k,
                ef_search=settings.hnsw_ef_search,
            )
            try:
                await report(bench, small)
            finally:
                await floor.close()
    finally:
        server.should_exit = True
        await task


def pg_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise SystemExit("no database URL")
    return settings.database_url


async def report(bench: Bench, small: int) -> None:
    """Measures and prints every figure; the goals last."""
    sizes, ids = bench.tenants.sizes, bench.tenants.ids
    statements = bench.app_sql.statements
    print(f"\nthe app's search transaction, from vector_ranked ({len(statements)} statements):")
    for sql, _ in statements:
        print("  " + " ".join(sql.split()))

    whole = await measure_whole_table(bench)
    print(f"\nwhole table, as the owner (no workspace filter), {len(bench.texts)} queries:")
    print(
        f"  HNSW (ef_search {bench.ef_search}) SELECT p50/p95 {whole.hnsw.select} ms, "
        f"plan {whole.hnsw.plan}; exact {whole.exact.select} ms, plan {whole.exact.plan}; "
        f"recall@{bench.k} {mean_recall(whole.hnsw.results, whole.exact.results):.3f}"
    )

    picks = sweep_picks(sizes)
    scattered = await sweep(bench, picks)
    truth = {rank: row.exact.results for rank, row in scattered.items()}

    served: dict[int, Served] = {}
    parts: dict[int, dict[str, Stats]] = {}
    for rank in (0, small):
        user = await add_reader(bench.owner, ids[rank])
        token = bench.services.auth.issue_token(User(id=user, token_version=0)).access_token
        served[rank] = await measure_served(bench, ids[rank], token)
        parts[rank] = await breakdown(bench, ids[rank], token)
    print_served(bench, served, parts, truth)

    await ef_sweep(bench, (0, small), truth, whole)

    phases = {"as loaded": scattered}
    print_phase("vectors in TOAST, rows scattered (as loaded):", scattered, bench, truth)
    owner = bench.owner
    await owner.execute(
        f"CREATE INDEX {COVERING_INDEX} ON chunk (workspace_id) INCLUDE (id, embedding)"
    )
    await owner.execute("VACUUM ANALYZE chunk")
    size = megabytes(await owner.fetchval(f"SELECT pg_relation_size('{COVERING_INDEX}')"))
    phases["covering index"] = await sweep(bench, picks)
    title = "with a covering index ON chunk (workspace_id) INCLUDE (id, embedding)"
    print_phase(f"{title}, {size}:", phases["covering index"], bench, truth)
    await owner.execute(f"DROP INDEX {COVERING_INDEX}")

    seconds = await rewrite(owner, "CLUSTER chunk USING ix_chunk_workspace_id")
    phases["CLUSTER"] = await sweep(bench, picks)
    title = f"after CLUSTER chunk USING ix_chunk_workspace_id ({seconds:.0f} s; it rebuilds"
    print_phase(
        f"{title} every index under an ACCESS EXCLUSIVE lock):", phases["CLUSTER"], bench, truth
    )

    # pgvector's type has STORAGE external: once a row passes ~2 kB (a 1,000-character chunk,
    # its tsvector and 1.5 kB of vector do) the vector moves to TOAST. MAIN keeps it inline;
    # it takes effect on the next rewrite (CLUSTER on the primary key restores load order).
    await owner.execute("ALTER TABLE chunk ALTER COLUMN embedding SET STORAGE MAIN")
    seconds = await rewrite(owner, "CLUSTER chunk USING pk_chunk")
    print(f"\nALTER COLUMN embedding SET STORAGE MAIN, rewritten in {seconds:.0f} s; now")
    print("  " + await describe_sizes(owner, sum(sizes)))
    phases["inline"] = await sweep(bench, picks)
    print_phase("vectors inline (STORAGE MAIN), rows scattered:", phases["inline"], bench, truth)
    seconds = await rewrite(owner, "CLUSTER chunk USING ix_chunk_workspace_id")
    phases["inline + CLUSTER"] = await sweep(bench, picks)
    title = f"vectors inline, after CLUSTER by workspace ({seconds:.0f} s):"
    print_phase(title, phases["inline + CLUSTER"], bench, truth)

    print(f"\nexact scan within p95 {GOAL_SMALL_P95_MS:g} ms:")
    for name, phase in phases.items():
        print(f"  {name:18} {exact_threshold(phase, sizes)}")
    print(f"\ngoals at {sum(sizes):,} rows (load average now {os.getloadavg()[0]:.1f}):")
    embed = {rank: parts[rank][PART_EMBED].p50 for rank in parts}
    for goal, measured, ok in goals(whole, served, embed, phases, truth, small):
        print(f"  {goal:60}{measured:>28}  {verdict(ok)}")


async def rewrite(owner: Any, statement: str) -> float:
    """Runs a table rewrite, then ANALYZE; returns the rewrite's seconds."""
    started = time.perf_counter()
    await owner.execute(statement)
    seconds = time.perf_counter() - started
    await owner.execute("ANALYZE chunk")
    return seconds


def print_served(
    bench: Bench,
    served: dict[int, Served],
    parts: dict[int, dict[str, Stats]],
    truth: dict[int, list[list[int]]],
) -> None:
    sizes = bench.tenants.sizes
    n = sum(sizes)
    print(
        f"\nGraphQL search(mode: VECTOR, k: {bench.k}) over HTTP vs the same SQL with asyncpg "
        "(ms, p50 / p95):"
    )
    print(
        f"  {'workspace':>16} {'rows':>8}{'GraphQL':>16}{'raw SQL tx':>16}{'ratio':>7}"
        f"{'w/o embed':>10}{'its SELECT':>16}{'recall@10':>11}  plan (custom -> after 6 runs)"
    )
    for rank, result in served.items():
        label = f"#{rank} ({sizes[rank] / n:.2%})"
        floor = result.floor
        ratio = result.graphql.p50 / floor.transaction.p50
        without = (result.graphql.p50 - parts[rank][PART_EMBED].p50) / floor.transaction.p50
        print(
            f"  {label:>16} {sizes[rank]:>8,}{result.graphql!s:>16}{floor.transaction!s:>16}"
            f"{ratio:>6.1f}x{without:>9.1f}x{floor.select!s:>16}"
            f"{mean_recall(floor.results, truth[rank]):>11.3f}  {floor.plan}"
        )
    for rank, result in served.items():
        count = len(bench.texts)
        print(f"  #{rank}: GraphQL hits = the SQL's rows in {result.agreeing}/{count} queries")
    print("\nwhere the app's time goes (in-process, same queries; p50 / p95 ms):")
    print(f"  {'':36}" + "".join(f"{'#' + str(rank):>18}" for rank in parts))
    for name in next(iter(parts.values())):
        print(f"  {name:36}" + "".join(f"{parts[rank][name]!s:>18}" for rank in parts))
    rest = {
        rank: served[rank].graphql.p50 - parts[rank][PART_AUTH].p50 - parts[rank][PART_SEARCH].p50
        for rank in parts
    }
    label = "rest: HTTP, Strawberry, JSON (p50)"
    print(f"  {label:36}" + "".join(f"{rest[rank]:>10.2f}{'':8}" for rank in rest))


def goals(
    whole: WholeTable,
    served: dict[int, Served],
    embed: dict[int, float],
    phases: dict[str, Phase],
    truth: dict[int, list[list[int]]],
    small: int,
) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for the issue's goals; `embed` is the query embedding's p50."""
    out: list[tuple[str, str, bool]] = []
    for rank, result in served.items():
        graphql, floor = result.graphql.p50, result.floor.transaction.p50
        out.append(
            (
                f"GraphQL p50 <= {GOAL_RATIO}x raw SQL p50, #{rank}",
                f"{graphql / floor:.1f}x ({graphql:.2f} vs {floor:.2f} ms)",
                graphql / floor <= GOAL_RATIO,
            )
        )
        without = (graphql - embed[rank]) / floor
        out.append(
            (
                f"  the same without the query embedding, #{rank}",
                f"{without:.1f}x ({graphql - embed[rank]:.2f} ms)",
                without <= GOAL_RATIO,
            )
        )
    got = mean_recall(whole.hnsw.results, whole.exact.results)
    out.append((f"recall@10 >= {GOAL_RECALL}, whole table", f"{got:.3f}", got >= GOAL_RECALL))
    for rank, want in ((0, GOAL_RECALL), (small, 1.0)):
        got = mean_recall(served[rank].floor.results, truth[rank])
        out.append((f"recall@10 >= {want}, #{rank} as served", f"{got:.3f}", got >= want))
        got = mean_recall(phases["as loaded"][rank].custom.results, truth[rank])
        out.append((f"recall@10 >= {want}, #{rank} custom plan", f"{got:.3f}", got >= want))
        got = mean_recall(phases["inline"][rank].custom.results, truth[rank])
        out.append((f"recall@10 >= {want}, #{rank} custom, inline", f"{got:.3f}", got >= want))
    p95s = [("app as served", served[small].floor.select.p95)]
    for name, phase in phases.items():
        p95s.append((f"custom plan, {name}", phase[small].custom.select.p95))
        p95s.append((f"exact, {name}", phase[small].exact.select.p95))
    for name, p95 in p95s:
        goal = f"#{small} (1 %) p95 <= {GOAL_SMALL_P95_MS:g} ms: {name}"
        out.append((goal, f"{p95:.2f} ms", p95 <= GOAL_SMALL_P95_MS))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_pdfs = next(
        (p for p in (ROOT / "corpus-pdfs", ROOT.parent / "corpus-pdfs") if p.is_dir()),
        ROOT / "corpus-pdfs",
    )
    parser.add_argument("--n", type=int, default=100_000, help="chunks (default 100000)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries (200)")
    parser.add_argument("--k", type=int, default=10, help="top-k (10)")
    parser.add_argument(
        "--base", type=int, default=6000, help="real chunks embedded with MiniLM (6000)"
    )
    parser.add_argument(
        "--noise", type=float, default=0.05, help="perturbation, fraction of the norm (0.05)"
    )
    parser.add_argument("--pdfs", type=Path, default=default_pdfs, help=f"({default_pdfs})")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "rag-gql" / "bench",
        help="where the MiniLM embeddings are cached (~/.cache/rag-gql/bench)",
    )
    parser.add_argument(
        "--shared-buffers", default="2GB", help="PostgreSQL shared_buffers ('' keeps 128MB)"
    )
    parser.add_argument(
        "--build-memory", default="2GB", help="maintenance_work_mem for index builds (2GB)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (7)")
    args = parser.parse_args()
    if not 0 < args.queries <= 10_000 or not 0 < args.k <= 50 or args.n < 10 * WORKSPACES:
        parser.error("need 0 < queries <= 10000, 0 < k <= 50 and n >= 1000")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
