"""Okapi BM25 keyword ranking over per-workspace statistics (Robertson & Zaragoza 2009).

The statistics live in `bm25_delta` (migration 0014): append-only signed rows written by
triggers on `chunk` in the transaction that writes or deletes the chunks, so they are exact
at every commit, whatever the path (ingestion, re-indexing, a document's, collection's or
workspace's deletion). A statistic is the sum of its rows: document frequency of a lexeme
(`chunks`), and on the row with the empty lexeme the chunk count (`chunks`) and the total
length (`length`). `compact` folds a lexeme's rows into one. The same triggers keep
`bm25_posting` (migration 0017): one row per chunk and lexeme, ordered by impact, which
`ranked` reads top-down per query lexeme and stops early.

Score of chunk d for query q (each distinct lexeme t of q counted once):

    Σ_t idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 - b + b · |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with N the workspace's chunk count, df(t) its chunks holding t, |d| the chunk's lexeme
occurrences (stop words excluded, as `to_tsvector('english', …)` leaves them out), avgdl
the workspace's mean |d|. The IDF is Lucene's (never negative, so a word in most chunks
still adds a little). Lexemes are PostgreSQL's (`chunk.tsv`, the same parser and English
stemming as before: `\\DeclareFixedFont`, `read.fwf`, `--disable-nls` are lexemes of their
own). A chunk matches on any of the query's lexemes (its postings; when every chunk is scored,
the GIN index on `tsv`, read through the `chunk_fts` view, migration 0006, since `@@` is
not LEAKPROOF).
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

IMPACT_K1, IMPACT_B, IMPACT_AVGDL = 1.2, 0.75, 100.0
"""The parameters of `bm25_posting.impact` (migration 0017's `rag_gql_bm25_impact`): the
term-frequency factor tf · (k1 + 1) / (tf + k1 · (1 - b + b · length / avgdl)) at these."""

FIRST_DEPTH = 128
"""Postings read per query lexeme by the first round of `ranked`; each further round reads
`DEPTH_GROWTH` times more."""
DEPTH_GROWTH = 4
MAX_DEPTH = 2048
"""Past this depth, `ranked` scores every chunk holding a query lexeme from its postings."""
EXHAUSTIVE_POSTINGS = 50000
"""When the query's lexemes have at most this many postings in all (the sum of their
document frequencies), `ranked` reads them all at once instead of by rounds."""
MAX_RESOLVED = 512
"""Most candidates a round scores from their `tsv`; with more, it reads deeper first."""

ORDER = "round({}::numeric, 9) DESC"
"""How scores are ordered (then by chunk id): to 9 decimals, so equal scores summed in
another order (from postings or from a `tsv`) tie, and go by id."""

_EPSILON = 1e-9
"""Relative slack of the bounds' comparisons (float rounding of the Python and SQL sums)."""


def impact(tf: int, length: int) -> float:
    """`bm25_posting.impact` of a posting, as migration 0017's SQL function computes it (in
    float8, rounded to a float4 there)."""
    return (
        tf * (IMPACT_K1 + 1) / (tf + IMPACT_K1 * (1 - IMPACT_B + IMPACT_B * length / IMPACT_AVGDL))
    )


def impact_factor(k1: float, b: float, avgdl: float) -> float | None:
    """c such that a posting's term-frequency factor at (`k1`, `b`, `avgdl`) is at most
    c · its `impact`, for every tf ≥ 1 and length; None when no such c exists (k1 or b not
    positive: the factor no longer falls with the length as the impact does).

    Both factors are tf · (k + 1) / D with D = tf + p + q · length: p = k1 · (1 - b),
    q = k1 · b / avgdl (p0, q0 for the impact). D0 ≤ m · D with m = max(1, (1 + p0) / (1 + p),
    q0 / q) (tf ≥ 1 bounds (tf + p0) / (tf + p)), so the ratio is at most
    (k1 + 1) / (k1_0 + 1) · m. It is 1 at the impact's own parameters.
    """
    if k1 <= 0 or b <= 0 or avgdl <= 0:
        return None
    alpha0 = IMPACT_K1 * (1 - IMPACT_B)
    beta0 = IMPACT_K1 * IMPACT_B / IMPACT_AVGDL
    alpha, beta = k1 * (1 - b), k1 * b / avgdl
    m = max(1.0, (1 + alpha0) / (1 + alpha), beta0 / beta)
    return (k1 + 1) / (IMPACT_K1 + 1) * m * (1 + 1e-6)  # the impact is rounded to a float4


def ranking_statement(
    *,
    workspace_id: uuid.UUID,
    query: str,
    limit: int,
    k1: float = 1.2,
    b: float = 0.75,
    scope: ChunkScope | None = None,
    ids: Sequence[int] | None = None,
) -> Statement:
    """The statement scoring every matching chunk (columns: chunk id, BM25 score), best
    first; see `ranked`. With `ids`, only those chunks (when they match)."""
    args = _Args()
    query_text = args.add(query)
    where = (scope or ChunkScope()).where(args, workspace_id)
    ws = args.add(workspace_id)
    matching = _ANY_LEXEME.format(query_text)
    if ids is not None:
        where += f" AND c.id = ANY({args.add(list(ids), '::bigint[]')})"
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
        f" ORDER BY {ORDER.format('m.score')}, c.id LIMIT {args.add(limit)}"
    )
    return Statement(sql, tuple(args.values))


def _scoped(args: _Args, workspace_id: uuid.UUID, scope: ChunkScope | None) -> str:
    """The condition on posting `p` that its chunk is in `scope` ('' for the workspace)."""
    if scope is None or scope == ChunkScope():
        return ""
    where = scope.where(args, workspace_id)
    return f" AND EXISTS (SELECT FROM chunk c WHERE c.id = p.chunk_id AND {where})"


def _term_factor(args: _Args, k1: float, b: float, avgdl: float) -> str:
    """SQL of a posting's BM25 term-frequency factor (`p.tf`, `p.length`) at these values."""
    k, bb, avg = args.add(k1, "::float8"), args.add(b, "::float8"), args.add(avgdl, "::float8")
    return f"p.tf * ({k} + 1) / (p.tf + {k} * (1 - {bb} + {bb} * p.length / {avg}))"


def round_statement(
    *,
    workspace_id: uuid.UUID,
    idf: dict[str, float],
    depth: int,
    limit: int,
    k1: float,
    b: float,
    avgdl: float,
    factor: float,
    scope: ChunkScope | None = None,
) -> Statement:
    """One round of `ranked`: the first `depth` postings of each lexeme of `idf` in the
    workspace (of chunks in `scope`), highest impact first (a backward range scan of
    `pk_bm25_posting` per lexeme), summed per chunk in the database. Columns: chunk id,
    lower bound (its postings read), upper bound (plus the
    bound of each lexeme it was not read under), the bound of a chunk not read at all
    (`unseen`), and how many chunks reach the `limit`-th lower bound. Rows: the chunks
    whose upper bound reaches the `limit`-th lower bound, best upper first, at most
    `MAX_RESOLVED` + 1 (none when no chunk was read)."""
    args = _Args()
    ws = args.add(workspace_id)
    terms = args.add(list(idf), "::text[]")
    weights = args.add(list(idf.values()), "::float8[]")
    d = args.add(depth)
    scoped = _scoped(args, workspace_id, scope)
    part = _term_factor(args, k1, b, avgdl)
    sql = (
        f"WITH t AS (SELECT * FROM unnest({terms}, {weights}) AS t(lexeme, idf)),"  # noqa: S608
        f" r AS MATERIALIZED (SELECT t.lexeme, t.idf * {part} AS score, p.chunk_id, p.impact"
        " FROM t CROSS JOIN LATERAL (SELECT p.chunk_id, p.tf, p.length, p.impact"
        f" FROM bm25_posting p WHERE p.workspace_id = {ws} AND p.lexeme = t.lexeme{scoped}"
        f" ORDER BY p.impact DESC, p.chunk_id DESC LIMIT {d}) p),"
        " lists AS (SELECT t.lexeme, CASE WHEN count(r.chunk_id) = "
        f"{d} THEN t.idf * {args.add(factor, '::float8')} * min(r.impact) ELSE 0 END AS bound"
        " FROM t LEFT JOIN r ON r.lexeme = t.lexeme GROUP BY t.lexeme, t.idf),"
        " unseen AS (SELECT sum(bound) AS bound FROM lists),"
        " s AS MATERIALIZED (SELECT r.chunk_id, sum(r.score) AS lower, sum(l.bound) AS seen"
        " FROM r JOIN lists l ON l.lexeme = r.lexeme GROUP BY r.chunk_id),"
        " floor AS (SELECT coalesce((SELECT lower FROM s ORDER BY lower DESC"
        f" OFFSET {args.add(limit)} - 1 LIMIT 1), 0) * (1 - {_EPSILON}) AS lower),"
        " c AS (SELECT s.chunk_id, s.lower, s.lower + u.bound - s.seen AS upper"
        " FROM s, unseen u, floor f WHERE s.lower + u.bound - s.seen >= f.lower)"
        " SELECT c.chunk_id, c.lower, c.upper, u.bound, count(*) OVER ()"
        " FROM c, unseen u ORDER BY c.upper DESC, c.chunk_id"
        f" LIMIT {args.add(MAX_RESOLVED + 1)}"
    )
    return Statement(sql, tuple(args.values))


def exhaustive_statement(
    *,
    workspace_id: uuid.UUID,
    idf: dict[str, float],
    limit: int,
    k1: float,
    b: float,
    avgdl: float,
    scope: ChunkScope | None = None,
) -> Statement:
    """Every chunk holding one of `idf`'s lexemes scored from its postings (columns: chunk
    id, score), best `limit` first: every posting of those lexemes read."""
    args = _Args()
    ws = args.add(workspace_id)
    terms = args.add(list(idf), "::text[]")
    weights = args.add(list(idf.values()), "::float8[]")
    scoped = _scoped(args, workspace_id, scope)
    part = _term_factor(args, k1, b, avgdl)
    sql = (
        "SELECT s.chunk_id, s.score FROM (SELECT p.chunk_id,"  # noqa: S608
        f" sum(t.idf * {part}) AS score FROM unnest({terms}, {weights}) AS t(lexeme, idf)"
        f" JOIN bm25_posting p ON p.workspace_id = {ws} AND p.lexeme = t.lexeme"
        f" WHERE true{scoped} GROUP BY p.chunk_id) s"
        f" ORDER BY {ORDER.format('s.score')}, s.chunk_id LIMIT {args.add(limit)}"
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

    Exact, by the threshold algorithm without random access (Fagin, Lotem & Naor 2003)
    over impact-ordered postings (Anh & Moffat 2006; `bm25_posting`, migration 0017): each
    round (`round_statement`) reads the first `depth` postings of every query lexeme, best
    impact first, and sums them per chunk in the database. A chunk not read has, for each
    lexeme whose list was not read to its end, a term factor of at most `impact_factor`
    times the last impact read (none for a list read to its end): the sum of those bounds,
    weighted by IDF, bounds its score; a chunk read is bounded the same way for the
    lexemes it was not read under. Those that could still reach the `limit`-th score are
    scored exactly (from their `tsv`: `ranking_statement` restricted to them). When the
    `limit`-th exact score is above every bound, the list is final; otherwise the next
    round reads `DEPTH_GROWTH` times deeper. Past `MAX_DEPTH`, or at once when the query's
    lexemes hold at most `EXHAUSTIVE_POSTINGS` postings, every chunk holding a query
    lexeme is scored from its postings (`exhaustive_statement`, no `tsv` read). Scores are
    ordered to 9 decimals (`ORDER`), then by id.
    """
    n, total, frequencies = await _frequencies(conn, workspace_id, query)
    held = [w for w, df in frequencies.items() if df > 0]
    if not held:
        return []
    statement = partial(
        ranking_statement,
        workspace_id=workspace_id,
        query=query,
        k1=k1,
        b=b,
        scope=scope,
    )
    avgdl = max(total / n, 1e-9)
    idf = {w: math.log(1 + (n - frequencies[w] + 0.5) / (frequencies[w] + 0.5)) for w in held}
    factor = impact_factor(k1, b, avgdl)
    depth = FIRST_DEPTH
    if sum(frequencies[w] for w in held) <= EXHAUSTIVE_POSTINGS:
        factor = None  # reading every posting costs less than a round
    while factor is not None and depth <= MAX_DEPTH:
        step = round_statement(
            workspace_id=workspace_id,
            idf=idf,
            depth=depth,
            limit=limit,
            k1=k1,
            b=b,
            avgdl=avgdl,
            factor=factor,
            scope=scope,
        )
        rows = await conn.fetch(step.sql, *step.args)
        depth *= DEPTH_GROWTH
        if not rows:
            return []
        unseen = float(rows[0][3])
        uppers = [float(r[2]) for r in rows]
        if len(rows) > MAX_RESOLVED or (len(rows) >= limit and uppers[limit - 1] <= unseen):
            continue  # too many to score, or none can end above an unread chunk's bound
        if unseen > 0 and len(rows) < limit:
            continue
        exact = statement(ids=[int(r[0]) for r in rows], limit=limit)
        best = [(int(r[0]), float(r[1])) for r in await conn.fetch(exact.sql, *exact.args)]
        if unseen == 0 or (len(best) == limit and best[-1][1] > unseen * (1 + _EPSILON)):
            return best
    every = exhaustive_statement(
        workspace_id=workspace_id, idf=idf, limit=limit, k1=k1, b=b, avgdl=avgdl, scope=scope
    )
    return [(int(r[0]), float(r[1])) for r in await conn.fetch(every.sql, *every.args)]


async def _frequencies(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, query: str
) -> tuple[int, int, dict[str, int]]:
    """The workspace's chunk count and total length, and the document frequency of each
    distinct lexeme of `query` (empty when the query has no lexeme)."""
    rows = await conn.fetch(
        "SELECT t.w, s.chunks, s.length FROM (SELECT DISTINCT w FROM"
        " unnest(tsvector_to_array(to_tsvector('english', $2))) AS w"
        " UNION ALL SELECT '') AS t(w) CROSS JOIN LATERAL (SELECT"
        " coalesce(sum(d.chunks), 0) AS chunks, coalesce(sum(d.length), 0) AS length"
        " FROM bm25_delta d WHERE d.workspace_id = $1 AND d.lexeme = t.w) s",
        workspace_id,
        query,
    )
    found = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
    n, total = found.pop("", (0, 0))
    return n, total, {w: chunks for w, (chunks, _) in found.items()}


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


COMPACT_ABOVE = 8
"""Rows of a lexeme above which the compaction after a document's ingestion folds them."""


def _lock_key(workspace_id: uuid.UUID) -> int:
    """The advisory lock of a workspace's compaction (a signed 64-bit key)."""
    return int.from_bytes(workspace_id.bytes[:8], "big", signed=True) ^ 0x626D3235


async def compact(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    document_id: uuid.UUID | None = None,
    above: int | None = None,
) -> int:
    """Folds the workspace's rows of each lexeme that has more than `above` into one row
    (their sum; none when it is zero); returns how many rows were removed. With
    `document_id`, only the lexemes of that document's chunks (and the totals row) are
    folded, and `above` defaults to `COMPACT_ABOVE` (the rows a query sums per lexeme stay
    bounded without rewriting each lexeme's row after every document); without, to 1. Does
    nothing when another transaction is compacting the workspace
    (`pg_try_advisory_xact_lock`).

    Run it in a short transaction of its own, after the rows were committed: it deletes only
    rows it sees and inserts their sum in the same statement, so every reader sees the same
    sums before and after, and writers (which only insert) never wait for it.
    """
    threshold = above if above is not None else COMPACT_ABOVE if document_id else 1
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
            " WHERE d.workspace_id = :ws GROUP BY d.lexeme HAVING count(*) > :above),"
            " gone AS (DELETE FROM bm25_delta d USING folded f"
            " WHERE d.workspace_id = :ws AND d.lexeme = f.lexeme"
            " RETURNING d.lexeme, d.chunks, d.length),"
            " added AS (INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)"
            " SELECT :ws, g.lexeme, sum(g.chunks), sum(g.length) FROM gone g GROUP BY g.lexeme"
            " HAVING sum(g.chunks) <> 0 OR sum(g.length) <> 0 RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM added)"
        ),
        {"ws": workspace_id, "doc": document_id, "above": threshold},
    )
    removed, added = result.one()
    return int(removed) - int(added)
