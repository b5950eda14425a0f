"""Okapi BM25 keyword search: exact per-workspace statistics, scores against a reference."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter

import asyncpg
import numpy as np
import pytest

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.repositories import bm25, search_sql
from tests.conftest import TEST_EMBED_DIM
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox
from tests.support.sql import connect, workspace_of
from tests.support.uploads import upload_ok

A_VECTOR = "[" + ",".join(["0.1"] * TEST_EMBED_DIM) + "]"
DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
REINDEX = "mutation($id: ID!) { reindexDocument(id: $id) { id status } }"
SEARCH = (
    "query($q: String!, $k: Int!) { search(query: $q, mode: KEYWORD, k: $k)"
    " { page score document { filename } } }"
)


Statistics = tuple[int, int, dict[str, int]]


async def stored(conn: asyncpg.Connection, ws: uuid.UUID) -> Statistics:
    """The workspace's statistics as `bm25_delta` sums them (lexemes of non-zero df)."""
    totals = await conn.fetchrow(
        "SELECT coalesce(sum(chunks), 0), coalesce(sum(length), 0) FROM bm25_delta"
        " WHERE workspace_id = $1 AND lexeme = ''",
        ws,
    )
    rows = await conn.fetch(
        "SELECT lexeme, sum(chunks) FROM bm25_delta WHERE workspace_id = $1 AND lexeme <> ''"
        " GROUP BY lexeme HAVING sum(chunks) <> 0",
        ws,
    )
    return int(totals[0]), int(totals[1]), {r[0]: int(r[1]) for r in rows}


async def recounted(conn: asyncpg.Connection, ws: uuid.UUID) -> Statistics:
    """The same statistics counted from the chunks themselves."""
    n, total = await conn.fetchrow(
        "SELECT count(*), coalesce(sum((SELECT sum(cardinality(u.positions))"
        " FROM unnest(c.tsv) u)), 0) FROM chunk c WHERE c.workspace_id = $1",
        ws,
    )
    rows = await conn.fetch(
        "SELECT u.lexeme, count(*) FROM chunk c, unnest(c.tsv) u WHERE c.workspace_id = $1"
        " GROUP BY u.lexeme",
        ws,
    )
    return int(n), int(total), {r[0]: int(r[1]) for r in rows}


Posting = tuple[str, int, int, int, float]


async def postings(conn: asyncpg.Connection, ws: uuid.UUID) -> set[Posting]:
    """The workspace's `bm25_posting` rows: (lexeme, chunk id, tf, length, impact)."""
    rows = await conn.fetch(
        "SELECT lexeme, chunk_id, tf, length, impact FROM bm25_posting WHERE workspace_id = $1",
        ws,
    )
    return {(r[0], r[1], r[2], r[3], r[4]) for r in rows}


async def recounted_postings(conn: asyncpg.Connection, ws: uuid.UUID) -> set[Posting]:
    """The same postings from the chunks themselves, the impact computed in Python."""
    rows = await conn.fetch(
        "SELECT u.lexeme, c.id, cardinality(u.positions), (SELECT sum(cardinality(v.positions))"
        " FROM unnest(c.tsv) v) FROM chunk c, unnest(c.tsv) u WHERE c.workspace_id = $1",
        ws,
    )
    return {(r[0], r[1], r[2], r[3], float(np.float32(bm25.impact(r[2], r[3])))) for r in rows}


async def assert_exact(settings: Settings, ws: uuid.UUID) -> Statistics:
    async with connect(settings) as conn:
        now = await stored(conn, ws)
        assert now == await recounted(conn, ws)
        assert await postings(conn, ws) == await recounted_postings(conn, ws)
    return now


async def test_statistics_stay_exact_through_ingestion_deletion_and_reindexing(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    ws = await workspace_of(settings, "ada@example.com")
    first = await upload_ok(gql, "a.pdf", make_pdf(["apples and pears", "apples again"]), token)
    second = await upload_ok(gql, "b.pdf", make_pdf(["pears only here", "zebra crossing"]), token)
    for doc in (first, second):
        assert (await gql.wait_for_document(doc["id"], token=token))["status"] == "READY"
    n, total, df = await assert_exact(settings, ws)
    assert (n, df["appl"], df["pear"], df["zebra"]) == (4, 2, 2, 1)

    doc = (await gql.data(REINDEX, {"id": first["id"]}, token=token))["reindexDocument"]
    assert (await gql.wait_for_document(doc["id"], token=token))["status"] == "READY"
    assert await assert_exact(settings, ws) == (n, total, df), "the same chunks again"

    assert (await gql.data(DELETE, {"id": second["id"]}, token=token))["deleteDocument"]
    n, total, df = await assert_exact(settings, ws)
    assert (n, df["appl"], df.get("pear"), df.get("zebra")) == (2, 2, 1, None)

    # Compaction leaves the sums as they were, one row per lexeme.
    async with app_db.transaction(ws) as session:
        await bm25.compact(session, workspace_id=ws)
    assert await assert_exact(settings, ws) == (n, total, df)
    async with connect(settings) as conn:
        assert (
            await conn.fetchval(
                "SELECT max(c) FROM (SELECT count(*) AS c FROM bm25_delta WHERE workspace_id = $1"
                " GROUP BY lexeme) x",
                ws,
            )
            == 1
        )


async def test_concurrent_ingestions_in_one_workspace_neither_wait_nor_deadlock(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """Two long transactions write chunks of the same words into one workspace, interleaved,
    while a compaction runs: none waits for another, and the sums are exact afterwards."""
    token = await sign_up(gql, inbox, "ada@example.com")
    ws = await workspace_of(settings, "ada@example.com")
    seed = await upload_ok(gql, "seed.pdf", make_pdf(["shared words here", "more shared"]), token)
    assert (await gql.wait_for_document(seed["id"], token=token))["status"] == "READY"
    async with connect(settings) as conn:
        documents = [uuid.uuid4(), uuid.uuid4()]
        for doc in documents:
            await conn.execute(
                "INSERT INTO document (id, workspace_id, filename, sha256, media_type,"
                " size_bytes, page_count, chunk_count, status) VALUES"
                " ($1, $2, $3, $3, 'application/pdf', 1, 1, 0, 'READY')",
                doc,
                ws,
                f"{doc}.pdf",
            )
    both_wrote = asyncio.Barrier(2)

    async def ingest(doc: uuid.UUID, words: str) -> None:
        async with app_db.driver_transaction(ws) as conn:
            await conn.execute("SET LOCAL lock_timeout = '5s'")
            for round_ in range(3):
                await conn.execute(
                    "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start,"
                    " char_end, text, embedding) SELECT $1, $2, $4 * 10 + n, 1, 0, 10,"
                    " $3 || ' ' || n, $5::vector FROM generate_series(1, 5) AS n",
                    ws,
                    doc,
                    words,
                    round_,
                    A_VECTOR,
                )
                if round_ == 0:
                    await both_wrote.wait()  # both transactions are open and have written
            await conn.execute("DELETE FROM chunk WHERE document_id = $1 AND ordinal = 1", doc)

    async def compaction() -> None:
        async with app_db.transaction(ws) as session:
            await bm25.compact(session, workspace_id=ws)

    await asyncio.wait_for(
        asyncio.gather(
            ingest(documents[0], "shared apples"),
            ingest(documents[1], "shared bananas"),
            compaction(),
        ),
        timeout=30,
    )
    n, _total, df = await assert_exact(settings, ws)
    assert (n, df["share"], df["appl"], df["banana"]) == (2 + 28, 2 + 28, 14, 14)


async def test_scores_equal_okapi_bm25_computed_by_hand(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    pages = [
        "the quick brown fox jumps over the lazy dog",
        "a fox and another fox and a third fox",
        "dogs are loyal; a dog is a friend",
        "nothing relevant in this passage at all, only words",
        "brown bread, brown rice, brown sugar and a brown dog",
    ]
    token = await sign_up(gql, inbox, "ada@example.com")
    ws = await workspace_of(settings, "ada@example.com")
    doc = await upload_ok(gql, "corpus.pdf", make_pdf(pages), token)
    assert (await gql.wait_for_document(doc["id"], token=token))["status"] == "READY"
    query = "brown fox dog"
    async with connect(settings) as conn:
        tokens = {
            r["id"]: Counter(
                {
                    u["lexeme"]: len(u["positions"])
                    for u in await conn.fetch(
                        "SELECT u.lexeme, u.positions FROM chunk c, unnest(c.tsv) u"
                        " WHERE c.id = $1",
                        r["id"],
                    )
                }
            )
            for r in await conn.fetch("SELECT id FROM chunk WHERE workspace_id = $1", ws)
        }
        terms = set(
            await conn.fetchval("SELECT tsvector_to_array(to_tsvector('english', $1))", query)
        )
    assert terms == {"brown", "fox", "dog"}
    k1, b = 1.3, 0.6
    n = len(tokens)
    avgdl = sum(sum(t.values()) for t in tokens.values()) / n
    expected: dict[int, float] = {}
    for cid, tf in tokens.items():
        length = sum(tf.values())
        score = 0.0
        for term in terms:
            df = sum(1 for t in tokens.values() if t[term])
            if tf[term]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * length / avgdl))
        if score:
            expected[cid] = score
    async with app_db.driver_transaction(ws) as conn:
        got = await bm25.ranked(conn, workspace_id=ws, query=query, limit=10, k1=k1, b=b)
    assert [cid for cid, _ in got] == sorted(expected, key=lambda c: (-expected[c], c))
    for cid, score in got:
        assert score == pytest.approx(expected[cid], rel=1e-9)


async def test_a_workspace_s_ranking_ignores_another_workspace_s_chunks(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Same chunks, same scores, whatever another tenant holds (its own statistics)."""
    pages = ["a kettle of fish", "fish and chips", "a kettle on the stove"]
    token = await sign_up(gql, inbox, "a@example.com")
    doc = await upload_ok(gql, "k.pdf", make_pdf(pages), token)
    assert (await gql.wait_for_document(doc["id"], token=token))["status"] == "READY"
    before = await gql.data(SEARCH, {"q": "kettle fish", "k": 3}, token=token)
    other = await sign_up(gql, inbox, "b@example.com")
    doc = await upload_ok(gql, "f.pdf", make_pdf(["fish"] * 30 + ["kettle"]), other)
    assert (await gql.wait_for_document(doc["id"], token=other))["status"] == "READY"
    after = await gql.data(SEARCH, {"q": "kettle fish", "k": 3}, token=token)
    assert after == before
    assert before["search"][0]["page"] == 1, "both words first"


async def test_the_threshold_algorithm_returns_the_full_ranking(
    gql: GraphQLClient,
    inbox: Inbox,
    settings: Settings,
    app_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read top-down from the postings, stopping early, `ranked` returns exactly what scoring
    every match returns: at any depth, with a scope, with parameters far from the impact's
    (the bound's factor above 1), and it reads deeper when the bound says so."""
    token = await sign_up(gql, inbox, "ada@example.com")
    ws = await workspace_of(settings, "ada@example.com")
    doc = await upload_ok(gql, "seed.pdf", make_pdf(["a zeppelin over a garden"]), token)
    assert (await gql.wait_for_document(doc["id"], token=token))["status"] == "READY"
    async with connect(settings) as conn:
        document = await conn.fetchval("SELECT id FROM document WHERE workspace_id = $1", ws)
        await conn.execute(
            "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start, char_end,"
            " text, embedding) SELECT $1, $2, 10 + n, 1 + n % 3, 0, 10, CASE"
            " WHEN n % 50 = 0 THEN 'zeppelin garden hangar ' || n"
            " WHEN n % 7 = 0 THEN 'garden garden walls and gates ' || repeat('stone ', n % 5) || n"
            " WHEN n % 11 = 0 THEN 'walls of the hangar, ' || repeat('a long wall ', n % 9) || n"
            " ELSE 'garden path number ' || n END, $3::vector"
            " FROM generate_series(1, 400) AS n",
            ws,
            document,
            A_VECTOR,
        )
    await assert_exact(settings, ws)
    monkeypatch.setattr(bm25, "FIRST_DEPTH", 4)
    monkeypatch.setattr(bm25, "MAX_DEPTH", 256)
    monkeypatch.setattr(bm25, "EXHAUSTIVE_POSTINGS", 0)  # rounds, whatever the lists' length
    depths: list[int] = []
    read = bm25.round_statement

    def spy(**kwargs: object) -> object:
        depths.append(int(kwargs["depth"]))  # type: ignore[call-overload]
        return read(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bm25, "round_statement", spy)
    rounds: dict[tuple[str, int, float, float, bool], list[int]] = {}
    for query in ("zeppelin garden", "hangar walls", "garden", "stone walls gates", "nothing"):
        for limit in (1, 5, 30):
            for k1, b in ((1.2, 0.75), (2.0, 0.3), (0.5, 1.0)):
                for scoped in (False, True):
                    scope = search_sql.ChunkScope(page_from=2) if scoped else None
                    depths.clear()
                    async with app_db.driver_transaction(ws) as conn:
                        got = await bm25.ranked(
                            conn,
                            workspace_id=ws,
                            query=query,
                            limit=limit,
                            k1=k1,
                            b=b,
                            scope=scope,
                        )
                        full = bm25.ranking_statement(
                            workspace_id=ws, query=query, limit=limit, k1=k1, b=b, scope=scope
                        )
                        want = [
                            (int(r[0]), float(r[1])) for r in await conn.fetch(full.sql, *full.args)
                        ]
                    assert [c for c, _ in got] == [c for c, _ in want], (query, limit, k1, b)
                    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-12)
                    rounds[(query, limit, k1, b, scoped)] = list(depths)
    # One round when the first postings outscore every bound; deeper rounds otherwise.
    # "garden" is in ~350 chunks: its list is read to 16 only, and no chunk is scored but
    # the candidates (every match is scored only past MAX_DEPTH).
    assert rounds[("zeppelin garden", 5, 1.2, 0.75, False)] == [4, 16]
    assert rounds[("nothing", 5, 1.2, 0.75, False)] == []
    scored: list[object] = []
    statement = bm25.ranking_statement

    def scoring(**kwargs: object) -> object:
        scored.append(kwargs.get("ids"))
        return statement(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bm25, "ranking_statement", scoring)
    async with app_db.driver_transaction(ws) as conn:
        await bm25.ranked(conn, workspace_id=ws, query="zeppelin garden", limit=5)
    assert scored
    assert all(ids is not None and len(ids) <= 16 * 2 for ids in scored)  # type: ignore[arg-type]

    # Short lists: every posting read at once, no round, the same ranking.
    monkeypatch.setattr(bm25, "EXHAUSTIVE_POSTINGS", 10_000)
    for query in ("zeppelin garden", "hangar walls", "stone walls gates"):
        depths.clear()
        async with app_db.driver_transaction(ws) as conn:
            got = await bm25.ranked(conn, workspace_id=ws, query=query, limit=30)
            full = statement(workspace_id=ws, query=query, limit=30)
            want = [(int(r[0]), float(r[1])) for r in await conn.fetch(full.sql, *full.args)]
        assert [c for c, _ in got] == [c for c, _ in want], query
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-12)
        assert depths == []


async def test_the_bound_holds_for_any_parameters_and_length() -> None:
    """`impact_factor` times the impact bounds the term factor at other (k1, b, avgdl), for every tf
    and length (the threshold algorithm is exact only if it does); None where none can."""
    for k1, b, avgdl in ((1.2, 0.75, 100.0), (2.0, 0.3, 7.0), (0.5, 1.0, 400.0), (3.0, 0.9, 1.0)):
        factor = bm25.impact_factor(k1, b, avgdl)
        assert factor is not None
        for tf in (1, 2, 3, 7, 50, 256):
            for length in (tf, tf + 1, 10, 99, 100, 101, 1000, 100000):
                if length < tf:
                    continue
                real = tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl))
                key = float(np.float32(bm25.impact(tf, length)))
                assert real <= factor * key, (k1, b, avgdl, tf, length)
    assert bm25.impact_factor(1.2, 0.75, 100.0) == pytest.approx(1.0, abs=1e-5)
    assert bm25.impact_factor(1.2, 0.0, 100.0) is None
    assert bm25.impact_factor(0.0, 0.75, 100.0) is None


async def test_the_impact_is_the_migration_s_function(settings: Settings) -> None:
    async with connect(settings) as conn:
        for tf, length in ((1, 1), (1, 100), (3, 17), (200, 4000)):
            got = await conn.fetchval("SELECT rag_gql_bm25_impact($1, $2)", tf, length)
            assert got == float(np.float32(bm25.impact(tf, length)))


async def test_a_deleted_workspace_leaves_no_postings(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Deleting a workspace (its chunks go by cascade) removes its postings by their key's
    prefix; another workspace's stay as they were."""
    for email in ("a@example.com", "b@example.com"):
        token = await sign_up(gql, inbox, email)
        doc = await upload_ok(gql, "k.pdf", make_pdf(["a kettle of fish", "fish again"]), token)
        assert (await gql.wait_for_document(doc["id"], token=token))["status"] == "READY"
    gone = await workspace_of(settings, "a@example.com")
    kept = await workspace_of(settings, "b@example.com")
    async with connect(settings) as conn:
        before = await postings(conn, kept)
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.workspace_id', $1, true)", str(gone))
            await conn.execute("DELETE FROM workspace WHERE id = $1", gone)
        left = await conn.fetchval(
            "SELECT count(*) FROM bm25_posting WHERE workspace_id = $1", gone
        )
        assert left == 0
        assert await postings(conn, kept) == before != set()
