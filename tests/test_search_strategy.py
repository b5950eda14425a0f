"""Vector search picks its strategy per scope: an exact scan while the scope holds at most
`EXACT_SEARCH_MAX_ROWS` chunks, the HNSW index above. Both agree on a small set, the count
follows the filters, and neither reaches another workspace."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.repositories import chunks, search_sql
from rag_gql.repositories.chunks import VectorRanking
from rag_gql.repositories.search_sql import ChunkScope, ExactScan, VectorStrategy
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.ollama_standin import embed_text
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import upload_ok
from tests.support.vector_index import build_index, hnsw_scan
from tests.test_search import LIBRARY, QUERIES

SEARCH = (
    "query($q: String!, $k: Int, $mode: SearchMode!, $filter: SearchFilter) "
    "{ search(query: $q, k: $k, mode: $mode, filter: $filter) "
    "{ score page document { id filename } } }"
)
LIBRARY_CHUNKS = sum(len(pages) for pages in LIBRARY.values())  # one chunk per short page


@asynccontextmanager
async def app_database(settings: Settings) -> AsyncIterator[Database]:
    """The app's own `Database` (as `rag_gql_app`, under row-level security)."""
    db = Database(settings.database_url or "")
    try:
        yield db
    finally:
        await db.dispose()


async def rank(
    db: Database,
    workspace: uuid.UUID,
    query: str,
    *,
    exact: int | ExactScan,
    dim: int,
    limit: int = LIBRARY_CHUNKS,
    scope: ChunkScope | None = None,
    as_workspace: uuid.UUID | None = None,
) -> tuple[VectorRanking, str]:
    """`vector_ranked` in a transaction of `as_workspace` (default `workspace`), and the plan
    of the SELECT it sent, explained in that transaction with sequential scans and sorts
    disabled, so the plan shows whether the HNSW index *can* serve the ORDER BY. `exact`: an
    `ExactScan`, or its `max_rows` alone."""
    statements = search_sql.vector_statements(
        workspace_id=workspace,
        embedding=embed_text(query, dim),
        limit=limit,
        ef_search=40,
        exact=exact if isinstance(exact, ExactScan) else ExactScan(exact),
        scope=scope,
    )
    async with db.driver_transaction(as_workspace or workspace) as conn:
        ranking = await chunks.vector_ranked(conn, statements)
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_sort = off")
        statement = statements.select(ranking.strategy)
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + statement.sql, *statement.args)
        )
    return ranking, plan


async def workspace_of(settings: Settings, filename: str) -> uuid.UUID:
    async with connect(settings) as conn:
        workspace: uuid.UUID = await conn.fetchval(
            "SELECT workspace_id FROM document WHERE filename = $1", filename
        )
    return workspace


async def test_exact_and_hnsw_agree_on_a_small_workspace(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    for filename, pages in LIBRARY.items():
        await upload_ok(gql, filename, make_pdf(pages), token)
    workspace = await workspace_of(settings, "kitchen.pdf")
    index = await build_index(settings, workspace)  # as past the threshold (test_vector_indexes)
    dim = settings.embed_dim
    async with app_database(settings) as db:
        for query, _, _ in QUERIES:
            exact, exact_plan = await rank(
                db, workspace, query, exact=settings.exact_search_max_rows, dim=dim
            )
            hnsw, hnsw_plan = await rank(db, workspace, query, exact=0, dim=dim)
            assert (exact.strategy, exact.in_scope) == (VectorStrategy.EXACT, LIBRARY_CHUNKS)
            assert (hnsw.strategy, hnsw.in_scope) == (VectorStrategy.HNSW, 1), "counted to 0 + 1"
            assert [cid for cid, _ in hnsw.rows] == [cid for cid, _ in exact.rows], query
            assert len(exact.rows) == LIBRARY_CHUNKS
            for (_, a), (_, b) in zip(exact.rows, hnsw.rows, strict=True):
                assert a == pytest.approx(b, abs=1e-6)
            # The exact SELECT orders by an expression no index provides: even with sorts
            # disabled the plan computes every distance and sorts; the HNSW one uses the index.
            assert index not in exact_plan and "Sort" in exact_plan, exact_plan
            assert hnsw_scan(workspace) in hnsw_plan, hnsw_plan

        # The count is of the scope, not of the workspace: three kitchen chunks stay exact
        # under a threshold of 3, while the whole workspace (9) is above it.
        kitchen = await document_ids(settings, "kitchen.pdf")
        scope = ChunkScope(document_ids=kitchen)
        narrowed, _ = await rank(db, workspace, "espresso", exact=3, dim=dim, scope=scope)
        assert (narrowed.strategy, narrowed.in_scope, len(narrowed.rows)) == (
            VectorStrategy.EXACT,
            3,
            3,
        )
        whole, _ = await rank(db, workspace, "espresso", exact=3, dim=dim)
        assert (whole.strategy, whole.in_scope) == (VectorStrategy.HNSW, 4)


def test_the_threshold_grows_with_the_table_up_to_its_cap() -> None:
    default = ExactScan(max_rows=3000, max_share=0.02, share_max_rows=20000)
    assert default.threshold(-1) == default.threshold(0) == 3000, "no statistics yet"
    assert default.threshold(100_000) == 3000, "2 % of 100k is less than max_rows"
    assert default.threshold(500_000) == 10_000
    assert default.threshold(1_000_000) == default.threshold(50_000_000) == 20_000
    assert ExactScan(max_rows=3000).threshold(1_000_000) == 3000
    larger = ExactScan(max_rows=50_000, max_share=0.02, share_max_rows=20_000)
    assert larger.threshold(10**6) == 50_000, "the cap bounds the share, not max_rows"


async def test_a_small_share_of_the_table_is_searched_exactly(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Above `max_rows`, a scope holding at most `max_share` of the table's estimated rows
    (PostgreSQL's statistics) is still scanned exactly, up to the cap."""
    token = await sign_up(gql, inbox, "ada@example.com")
    for filename, pages in LIBRARY.items():
        await upload_ok(gql, filename, make_pdf(pages), token)
    async with connect(settings) as owner:
        await owner.execute("ANALYZE chunk")
        table_rows = await owner.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'chunk'::regclass"
        )
    assert table_rows == LIBRARY_CHUNKS
    workspace = await workspace_of(settings, "kitchen.pdf")
    async with app_database(settings) as db:
        share, _ = await rank(
            db,
            workspace,
            "espresso",
            exact=ExactScan(max_rows=0, max_share=1.0, share_max_rows=100),
            dim=settings.embed_dim,
        )
        assert (share.strategy, share.threshold, share.in_scope) == (
            VectorStrategy.EXACT,
            LIBRARY_CHUNKS,
            LIBRARY_CHUNKS,
        )
        capped, _ = await rank(
            db,
            workspace,
            "espresso",
            exact=ExactScan(max_rows=0, max_share=1.0, share_max_rows=2),
            dim=settings.embed_dim,
        )
        assert (capped.strategy, capped.threshold, capped.in_scope) == (VectorStrategy.HNSW, 2, 3)
        assert [cid for cid, _ in capped.rows] == [cid for cid, _ in share.rows]


async def document_ids(settings: Settings, filename: str) -> list[uuid.UUID]:
    async with connect(settings) as conn:
        return [
            r[0] for r in await conn.fetch("SELECT id FROM document WHERE filename = $1", filename)
        ]


async def search(
    gql: GraphQLClient,
    token: str,
    query: str,
    mode: str,
    k: int = 3,
    filter: Json | None = None,
) -> list[Json]:
    variables: Json = {"q": query, "k": k, "mode": mode, "filter": filter}
    hits: list[Json] = (await gql.data(SEARCH, variables, token=token))["search"]
    return hits


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> list[VectorRanking]:
    """Every `vector_ranked` result of the app served in this process, in order."""
    recorded: list[VectorRanking] = []
    original = chunks.vector_ranked

    async def recording(
        conn: asyncpg.Connection, statements: search_sql.VectorStatements
    ) -> VectorRanking:
        ranking = await original(conn, statements)
        recorded.append(ranking)
        return ranking

    monkeypatch.setattr(chunks, "vector_ranked", recording)
    return recorded


async def test_a_workspace_above_the_threshold_searches_the_index(
    inbox: Inbox, settings: Settings, decisions: list[VectorRanking]
) -> None:
    lowered = settings.model_copy(
        update={"exact_search_max_rows": 4, "exact_search_max_share": 0.0}
    )
    async with serve_client(lowered) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        for filename, pages in LIBRARY.items():
            await upload_ok(gql, filename, make_pdf(pages), token)
        for mode in ("VECTOR", "HYBRID"):
            for query, filename, page in QUERIES:
                hits = await search(gql, token, query, mode)
                best = hits[0]
                assert (best["document"]["filename"], best["page"]) == (filename, page), (
                    mode,
                    query,
                    hits,
                )
        count = 2 * len(QUERIES)
        assert [(d.strategy, d.in_scope) for d in decisions] == [(VectorStrategy.HNSW, 5)] * count

        # A filter leaving 3 chunks (at most 4) takes the exact path inside the same workspace.
        decisions.clear()
        (kitchen,) = await document_ids(settings, "kitchen.pdf")
        only = {"documentIds": [str(kitchen)]}
        hits = await search(gql, token, "espresso crema", "VECTOR", k=5, filter=only)
        assert [h["page"] for h in hits][:1] == [3] and len(hits) == 3, hits
        assert [(d.strategy, d.in_scope) for d in decisions] == [(VectorStrategy.EXACT, 3)]


async def test_neither_strategy_reaches_another_workspace(
    inbox: Inbox, settings: Settings, decisions: list[VectorRanking]
) -> None:
    lowered = settings.model_copy(
        update={"exact_search_max_rows": 4, "exact_search_max_share": 0.0}
    )
    page = LIBRARY["sailing.pdf"][0]  # bob stores alice's bowline page word for word
    async with serve_client(lowered) as gql:
        alice = await sign_up(gql, inbox, "alice@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        for filename, pages in LIBRARY.items():
            await upload_ok(gql, filename, make_pdf(pages), alice)
        await upload_ok(gql, "copy.pdf", make_pdf([page]), bob)

        alice_hits = await search(gql, alice, page, "VECTOR", k=50)
        bob_hits = await search(gql, bob, page, "VECTOR", k=50)
    assert {h["document"]["filename"] for h in alice_hits} == set(LIBRARY)
    assert len(alice_hits) == LIBRARY_CHUNKS
    assert alice_hits[0]["document"]["filename"] == "sailing.pdf"
    assert [(h["document"]["filename"], h["page"]) for h in bob_hits] == [("copy.pdf", 1)]
    assert [(d.strategy, d.in_scope) for d in decisions] == [
        (VectorStrategy.HNSW, 5),  # alice: 9 chunks, counted to 4 + 1; bob's not among them
        (VectorStrategy.EXACT, 1),  # bob: his one chunk
    ]

    # Naming bob's workspace from alice's transaction finds nothing on either path:
    # row-level security (app.workspace_id = alice's) filters the count and the SELECT.
    alice_ws = await workspace_of(settings, "kitchen.pdf")
    bob_ws = await workspace_of(settings, "copy.pdf")
    async with app_database(settings) as db:
        for threshold in (0, 100):
            ranking, _ = await rank(
                db,
                bob_ws,
                page,
                exact=threshold,
                dim=settings.embed_dim,
                as_workspace=alice_ws,
            )
            assert (ranking.in_scope, ranking.rows) == (0, []), threshold


def test_a_fresh_process_reads_the_documents_a_search_loads() -> None:
    """`load` builds `Document`s without their constructor; in a process whose first use of
    the ORM is a search (authentication and search skip the ORM) their attributes must still
    read. Run in a fresh interpreter: this test process configured its mappers long ago."""
    script = (
        "import uuid, datetime\n"
        "from rag_gql.repositories import chunks, search_sql\n"
        "now = datetime.datetime.now(datetime.UTC)\n"
        "values = {'id': uuid.uuid4(), 'filename': 'a.pdf', 'created_at': now}\n"
        "row = [values.get(name) for name in search_sql.DOCUMENT_COLUMNS]\n"
        "document = chunks._document(row)\n"
        "print(document.filename, document.id == values['id'])\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout) == (0, "a.pdf True\n"), done.stderr
