"""Disk per million chunks: the `chunk` table and each of its indexes, at each EMBED_DIM.

For each dimension it starts an embedded PostgreSQL (temporary), migrates it to head with
that `EMBED_DIM`, loads `--rows` chunks by COPY as `bench/search.py` does (100 workspaces,
documents of 40 chunks, the HNSW and GIN indexes dropped for the load and built after it),
then prints what PostgreSQL reports (`pg_relation_size` of the heap, its TOAST table and
every index; the mean `pg_column_size` of the stored columns) and the same scaled to one
million rows. Scaling is linear: every structure here grows with the row count (HNSW's
graph, at fixed `m`, too); `bench/search.py`'s figures at 100,000 and 1,000,000 rows check it.

The text of the rows is real English: this repository's Markdown cut into 1,000-character
chunks with 150 of overlap (the app's defaults), so the tsvector and TOAST compression are
those of prose. The vectors are random unit vectors (incompressible, as real embeddings are).

    python bench/sizes.py                        # 20,000 rows at 384 and 768 dimensions
    python bench/sizes.py --rows 50000 --dims 768,1024
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from rag_gql.db import migrate
from rag_gql.db.embedded import start_embedded

ROOT = Path(__file__).resolve().parents[1]
WORKSPACES = 100
CHUNKS_PER_DOCUMENT = 40
CHUNK_SIZE, CHUNK_OVERLAP = 1000, 150

SIZES = """
SELECT c.relname, pg_relation_size(c.oid)
  FROM pg_class c
 WHERE c.oid = 'chunk'::regclass
    OR c.oid = (SELECT reltoastrelid FROM pg_class WHERE relname = 'chunk')
    OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'chunk'::regclass)
    OR c.oid IN (SELECT indexrelid FROM pg_index
                  WHERE indrelid = (SELECT reltoastrelid FROM pg_class WHERE relname = 'chunk'))
 ORDER BY 2 DESC
"""
COLUMNS = """
SELECT avg(pg_column_size(embedding)), avg(pg_column_size(text)), avg(octet_length(text)),
       avg(pg_column_size(tsv)), avg(pg_column_size(c.*)),
       count(*) FILTER (WHERE pg_column_toast_chunk_id(embedding) IS NOT NULL)
  FROM chunk c
"""


def texts() -> list[str]:
    """The repository's Markdown, cut as the app cuts text (1,000 characters, 150 overlap)."""
    pages = [
        p.read_text(encoding="utf-8")
        for p in sorted(ROOT.glob("**/*.md"))
        if ".venv" not in p.parts
    ]
    prose = "\n\n".join(pages)
    step = CHUNK_SIZE - CHUNK_OVERLAP
    return [prose[i : i + CHUNK_SIZE] for i in range(0, len(prose) - CHUNK_SIZE, step)]


async def load(conn: Any, *, rows: int, dim: int, corpus: list[str]) -> None:
    """COPYs 100 workspaces, their documents and `rows` chunks, as the table owner."""
    rng = np.random.default_rng(0)
    workspaces = [uuid.uuid4() for _ in range(WORKSPACES)]
    await conn.copy_records_to_table(
        "workspace",
        records=[(w, f"bench {i}", False) for i, w in enumerate(workspaces)],
        columns=("id", "name", "personal"),
    )
    documents = []
    for d in range(-(-rows // CHUNKS_PER_DOCUMENT)):
        workspace = workspaces[d % WORKSPACES]
        sha = hashlib.sha256(str(d).encode()).hexdigest()
        documents.append(
            (uuid.uuid4(), workspace, f"doc{d}.pdf", sha, "application/pdf", 1000, 40, 40, "READY")
        )
    await conn.copy_records_to_table(
        "document",
        records=documents,
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
    batch = 5000
    for start in range(0, rows, batch):
        stop = min(start + batch, rows)
        vectors = rng.normal(size=(stop - start, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = []
        for i in range(start, stop):
            doc = documents[i // CHUNKS_PER_DOCUMENT]
            text = corpus[i % len(corpus)]
            ordinal = i % CHUNKS_PER_DOCUMENT
            records.append(
                (doc[1], doc[0], ordinal, ordinal + 1, 0, len(text), text, vectors[i - start])
            )
        await conn.copy_records_to_table(
            "chunk",
            records=records,
            columns=(
                "workspace_id",
                "document_id",
                "ordinal",
                "page",
                "char_start",
                "char_end",
                "text",
                "embedding",
            ),
        )


async def measure(dim: int, rows: int, corpus: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-sizes-"))
    pg = await asyncio.to_thread(start_embedded, folder / "pg", delete_on_stop=True)
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, embed_dim=dim)
        conn = await asyncpg.connect(pg.url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await register_vector(conn)
            await conn.execute("DROP INDEX ix_chunk_embedding_hnsw; DROP INDEX ix_chunk_tsv")
            await load(conn, rows=rows, dim=dim, corpus=corpus)
            await conn.execute("SET maintenance_work_mem = '1GB'")
            await conn.execute("CREATE INDEX ix_chunk_tsv ON chunk USING gin (tsv)")
            await conn.execute(
                "CREATE INDEX ix_chunk_embedding_hnsw ON chunk"
                " USING hnsw (embedding vector_cosine_ops)"
            )
            await conn.execute("VACUUM ANALYZE chunk")
            report(dim, rows, await conn.fetch(SIZES), await conn.fetchrow(COLUMNS))
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(pg.stop)


def report(dim: int, rows: int, sizes: list[Any], columns: Any) -> None:
    scale = 1_000_000 / rows
    embedding, text, raw_text, tsv, row, toasted = columns
    print(f"\nEMBED_DIM {dim}, {rows:,} rows (HNSW m=16, ef_construction=64)")
    print(
        f"  mean bytes a row: embedding {embedding:.0f} (out of line: {toasted}),"
        f" text {text:.0f} stored ({raw_text:.0f} raw), tsv {tsv:.0f}, whole row {row:.0f}"
    )
    print(f"  {'relation':<36} {'MB measured':>12} {'MB per 1M rows':>15}")
    total = 0
    for name, size in sizes:
        total += size
        label = "TOAST of chunk" if name.startswith("pg_toast_") else name
        label = "TOAST index" if name.startswith("pg_toast_") and name.endswith("_index") else label
        print(f"  {label:<36} {size / 2**20:>12,.1f} {size * scale / 2**20:>15,.0f}")
    print(f"  {'total':<36} {total / 2**20:>12,.1f} {total * scale / 2**20:>15,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dims", default="384,768", help="comma-separated EMBED_DIM values")
    args = parser.parse_args()
    corpus = texts()
    print(f"text: {len(corpus):,} distinct chunks of this repository's Markdown")
    for dim in (int(d) for d in args.dims.split(",")):
        asyncio.run(measure(dim, args.rows, corpus))


if __name__ == "__main__":
    main()
