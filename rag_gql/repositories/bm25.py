"""Okapi BM25 keyword ranking over per-workspace statistics (Robertson & Zaragoza 2009).

The statistics live in `bm25_delta` (migration 0014): append-only signed rows written by
triggers on `chunk` in the transaction that writes or deletes the chunks, so they are exact
at every commit, whatever the path (ingestion, re-indexing, a document's, collection's or
workspace's deletion). A statistic is the sum of its rows: document frequency of a lexeme
(`chunks`), and on the row with the empty lexeme the chunk count (`chunks`) and the total
length (`length`). `compact` folds a lexeme's rows into one.

Score of chunk d for query q (each distinct lexeme t of q counted once):

    Σ_t idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 - b + b · |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with N the workspace's chunk count, df(t) its chunks holding t, |d| the chunk's lexeme
occurrences (stop words excluded, as `to_tsvector('english', …)` leaves them out), avgdl
the workspace's mean |d|. The IDF is Lucene's (never negative, so a word in most chunks
still adds a little). Lexemes are PostgreSQL's (`chunk.tsv`, the same parser and English
stemming as before: `\\DeclareFixedFont`, `read.fwf`, `--disable-nls` are lexemes of their
own). A chunk matches on any of the query's lexemes (the GIN index on `tsv`, read through
the `chunk_fts` view, migration 0006, since `@@` is not LEAKPROOF).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from functools import partial

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.repositories.search_sql import _ANY_LEXEME, ChunkScope, Statement, _Args

RARE_CHUNKS = 1000
"""Chunks of the workspace (by document frequency) the first, pruned pass of `ranked` may
score: its rarest query lexemes, as many as fit."""


def _quoted(lexeme: str) -> str:
    """A lexeme as a tsquery operand: quoted, its backslashes and quotes escaped."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def ranking_statement(
    *,
    workspace_id: uuid.UUID,
    query: str,
    limit: int,
    k1: float = 1.2,
    b: float = 0.75,
    scope: ChunkScope | None = None,
    match: Sequence[str] | None = None,
) -> Statement:
    """The statement of `ranked` (columns: chunk id, BM25 score); see there. With `match`,
    only chunks holding one of those lexemes are scored (still over every query lexeme)."""
    args = _Args()
    query_text = args.add(query)
    where = (scope or ChunkScope()).where(args, workspace_id)
    ws = args.add(workspace_id)
    matching = (
        _ANY_LEXEME.format(query_text)
        if match is None
        else args.add(" | ".join(_quoted(lexeme) for lexeme in match), "::tsquery")
    )
    sql = (
        "WITH terms AS (SELECT DISTINCT w AS lexeme FROM"  # noqa: S608
        f" unnest(tsvector_to_array(to_tsvector('english', {query_text}))) AS w),"
        " totals AS (SELECT coalesce(sum(t.chunks), 0)::float8 AS n,"
        " coalesce(sum(t.length), 0)::float8 AS total FROM bm25_delta t"
        f" WHERE t.workspace_id = {ws} AND t.lexeme = ''),"
        " idf AS (SELECT t.lexeme, ln(1 + (s.n - f.df + 0.5) / (f.df + 0.5)) AS idf"
        " FROM terms t CROSS JOIN totals s CROSS JOIN LATERAL (SELECT"
        " coalesce(sum(d.chunks), 0)::float8 AS df FROM bm25_delta d"
        f" WHERE d.workspace_id = {ws} AND d.lexeme = t.lexeme) f),"
        f" params AS (SELECT {args.add(k1)}::float8 AS k1, {args.add(b)}::float8 AS b,"
        " greatest(s.total / nullif(s.n, 0), 1e-9) AS avgdl FROM totals s)"
        " SELECT c.id, m.score FROM chunk_fts c CROSS JOIN params p CROSS JOIN LATERAL"
        " (SELECT sum(cardinality(u.positions))::float8 AS len FROM unnest(c.tsv) AS u) l"
        " CROSS JOIN LATERAL (SELECT sum(i.idf * cardinality(u.positions) * (p.k1 + 1)"
        " / (cardinality(u.positions) + p.k1 * (1 - p.b + p.b * l.len / p.avgdl))) AS score"
        " FROM unnest(c.tsv) AS u JOIN idf i ON i.lexeme = u.lexeme) m"
        f" WHERE {where} AND c.tsv @@ {matching}"
        f" ORDER BY m.score DESC, c.id LIMIT {args.add(limit)}"
    )
    return Statement(sql, tuple(args.values))


async def ranked(
    conn: asyncpg.Connection,
    *,
    workspace_id: uuid.UUID,
    query: str,
    limit: int,
    k1: float = 1.2,
    b: float = 0.75,
    scope: ChunkScope | None = None,
) -> list[tuple[int, float]]:
    """Returns up to `limit` (chunk id, Okapi BM25 score), best first (ties by id).

    Chunks of `scope` holding any of the query's lexemes, scored with the workspace's
    statistics (the scope restricts what is returned, never the statistics). A query without
    lexemes (only stop words) matches nothing. `conn` is in
    `Database.driver_transaction(workspace_id)`.

    Exact, with MaxScore pruning (Turtle & Flood 1995): the chunks holding the query's rarest
    lexemes (up to `RARE_CHUNKS` by document frequency) are scored first; a lexeme adds less
    than idf · (k1 + 1) to any chunk, so when the other lexemes' bounds sum below the
    `limit`-th score found, no chunk holding only those can enter the list and the chunks
    holding them are never read. Otherwise every matching chunk is scored.
    """
    frequencies = await _frequencies(conn, workspace_id, query)
    if not frequencies:
        return []
    n = frequencies.pop("")
    by_rarity = sorted(frequencies.items(), key=lambda item: (item[1], item[0]))
    rare: list[str] = []
    budget = 0
    for lexeme, df in by_rarity:
        if rare and budget + df > RARE_CHUNKS:
            break
        rare.append(lexeme)
        budget += df
    common = [lexeme for lexeme, _ in by_rarity[len(rare) :]]
    statement = partial(
        ranking_statement,
        workspace_id=workspace_id,
        query=query,
        limit=limit,
        k1=k1,
        b=b,
        scope=scope,
    )
    if common:
        first = statement(match=rare)
        rows = [(int(r[0]), float(r[1])) for r in await conn.fetch(first.sql, *first.args)]
        bound = sum(
            math.log(1 + (n - frequencies[w] + 0.5) / (frequencies[w] + 0.5)) * (k1 + 1)
            for w in common
        )
        if len(rows) == limit and bound * (1 + 1e-9) < rows[-1][1]:
            return rows
    full = statement()
    return [(int(r[0]), float(r[1])) for r in await conn.fetch(full.sql, *full.args)]


async def _frequencies(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, query: str
) -> dict[str, int]:
    """The workspace's document frequency of each distinct lexeme of `query`, and its chunk
    count under `''`; empty when the query has no lexeme."""
    rows = await conn.fetch(
        "SELECT w, (SELECT coalesce(sum(d.chunks), 0) FROM bm25_delta d"
        " WHERE d.workspace_id = $1 AND d.lexeme = w) FROM (SELECT DISTINCT w FROM"
        " unnest(tsvector_to_array(to_tsvector('english', $2))) AS w"
        " UNION ALL SELECT '') AS t(w)",
        workspace_id,
        query,
    )
    found = {str(r[0]): int(r[1]) for r in rows}
    return found if len(found) > 1 else {}


async def statistics(
    session: AsyncSession, *, workspace_id: uuid.UUID, lexemes: list[str]
) -> tuple[int, int, dict[str, int]]:
    """The workspace's (chunk count, total length, document frequency of each of `lexemes`)."""
    totals = (
        await session.execute(
            text(
                "SELECT coalesce(sum(chunks), 0), coalesce(sum(length), 0) FROM bm25_delta"
                " WHERE workspace_id = :ws AND lexeme = ''"
            ),
            {"ws": workspace_id},
        )
    ).one()
    rows = await session.execute(
        text(
            "SELECT lexeme, sum(chunks) FROM bm25_delta"
            " WHERE workspace_id = :ws AND lexeme = ANY(:lexemes) GROUP BY lexeme"
        ),
        {"ws": workspace_id, "lexemes": lexemes},
    )
    found = {str(lexeme): int(df) for lexeme, df in rows}
    return int(totals[0]), int(totals[1]), {w: found.get(w, 0) for w in lexemes}


def _lock_key(workspace_id: uuid.UUID) -> int:
    """The advisory lock of a workspace's compaction (a signed 64-bit key)."""
    return int.from_bytes(workspace_id.bytes[:8], "big", signed=True) ^ 0x626D3235


async def compact(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID | None = None,
) -> int:
    """Folds the workspace's rows of each lexeme that has more than one into one row (their
    sum; none when it is zero); returns how many rows were removed. With `document_id`, only
    the lexemes of that document's chunks (and the totals row) are folded. Does nothing
    when another transaction is compacting the workspace (`pg_try_advisory_xact_lock`).

    Run it in a short transaction of its own, after the rows were committed: it deletes only
    rows it sees and inserts their sum in the same statement, so every reader sees the same
    sums before and after, and writers (which only insert) never wait for it.
    """
    locked = await session.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _lock_key(workspace_id)}
    )
    if not locked.scalar_one():
        return 0
    terms = (
        "SELECT '' AS lexeme UNION SELECT DISTINCT unnest(tsvector_to_array(c.tsv))"
        " FROM chunk c WHERE c.workspace_id = :ws AND c.document_id = :doc"
        if document_id is not None
        else "SELECT DISTINCT d.lexeme FROM bm25_delta d WHERE d.workspace_id = :ws"
    )
    result = await session.execute(
        text(
            f"WITH terms AS ({terms}),"  # noqa: S608 (constant SQL; values are parameters)
            " folded AS (SELECT d.lexeme FROM bm25_delta d JOIN terms t ON t.lexeme = d.lexeme"
            " WHERE d.workspace_id = :ws GROUP BY d.lexeme HAVING count(*) > 1),"
            " gone AS (DELETE FROM bm25_delta d USING folded f"
            " WHERE d.workspace_id = :ws AND d.lexeme = f.lexeme"
            " RETURNING d.lexeme, d.chunks, d.length),"
            " added AS (INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)"
            " SELECT :ws, g.lexeme, sum(g.chunks), sum(g.length) FROM gone g GROUP BY g.lexeme"
            " HAVING sum(g.chunks) <> 0 OR sum(g.length) <> 0 RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM added)"
        ),
        {"ws": workspace_id, "doc": document_id},
    )
    removed, added = result.one()
    return int(removed) - int(added)
