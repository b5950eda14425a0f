"""A workspace gets an HNSW index of its own once its chunks pass the exact-scan threshold
(built by the `vector_index` job after its ingestion settles), its search reads it under
row-level security, a small workspace has none, and one that falls back loses it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.ingestion import queue
from rag_gql.ingestion.vector_indexes import VectorIndexes
from rag_gql.repositories import chunks, search_sql, vector_indexes
from rag_gql.repositories.search_sql import ExactScan, VectorStrategy
from rag_gql.repositories.vector_indexes import IndexAction, IndexState
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.ollama_standin import embed_text
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox
from tests.support.sql import connect, workspace_of
from tests.support.uploads import upload_ok
from tests.support.vector_index import hnsw_scan
from tests.test_search import LIBRARY

THRESHOLD = 4
"""The exact-scan threshold of these tests: LIBRARY's 9 chunks are above it."""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"exact_search_max_rows": THRESHOLD, "exact_search_max_share": 0.0}
    )


async def wait_for_index(settings: Settings, workspace_id: uuid.UUID, *, valid: bool) -> None:
    """Waits (up to 30 s) until the workspace's index is valid (`valid`) or absent."""
    name = vector_indexes.index_name(workspace_id)
    deadline = time.monotonic() + 30
    async with connect(settings) as conn:
        while True:
            found = await conn.fetchval(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", name
            )
            if (found is True) == valid and (valid or found is None):
                return
            assert time.monotonic() < deadline, f"{name}: {found}"
            await asyncio.sleep(0.2)


async def explain_hnsw(
    db: Database, workspace: uuid.UUID, *, as_workspace: uuid.UUID, dim: int
) -> tuple[list[int], str]:
    """The app's HNSW statement for `workspace`, run and explained in `as_workspace`'s
    transaction as the app role (sequential scans and sorts off: the table is tiny)."""
    statements = search_sql.vector_statements(
        workspace_id=workspace,
        embedding=embed_text("espresso crema", dim),
        limit=5,
        ef_search=40,
        exact=ExactScan(THRESHOLD),
    )
    hnsw = statements.select(VectorStrategy.HNSW)
    async with db.driver_transaction(as_workspace) as conn:
        await conn.execute("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_sort = off")
        rows = [int(r[0]) for r in await conn.fetch(hnsw.sql, *hnsw.args)]
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + hnsw.sql, *hnsw.args))
    return rows, plan


async def test_a_workspace_past_the_threshold_gets_an_index_its_search_reads_under_rls(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    big = await sign_up(gql, inbox, "big@example.com")
    small = await sign_up(gql, inbox, "small@example.com")
    for filename, pages in LIBRARY.items():
        await upload_ok(gql, filename, make_pdf(pages), big)
    await upload_ok(gql, "one.pdf", make_pdf(["A single short page."]), small)
    big_ws = await workspace_of(settings, "big@example.com")
    small_ws = await workspace_of(settings, "small@example.com")

    # The last READY document queued the build; the job built it, concurrently.
    await wait_for_index(settings, big_ws, valid=True)
    async with connect(settings) as conn:
        assert await vector_indexes.indexed_workspaces(conn) == [vector_indexes.index_name(big_ws)]
        predicate = await conn.fetchval(
            "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
            " WHERE i.indexrelid = to_regclass($1)",
            vector_indexes.index_name(big_ws),
        )
    assert str(big_ws) in predicate, predicate  # only the workspace's own chunks

    # The app's own statement, as the app role under the policy: the planner proves the
    # partial index's predicate from the workspace in the custom plan.
    rows, plan = await explain_hnsw(app_db, big_ws, as_workspace=big_ws, dim=settings.embed_dim)
    assert hnsw_scan(big_ws) in plan, plan
    assert "app.workspace_id" in plan, plan  # the policy still applies inside the index scan
    assert len(rows) == 5
    # The search itself (HNSW, 9 chunks > 4) finds what the exact scan finds.
    statements = search_sql.vector_statements(
        workspace_id=big_ws,
        embedding=embed_text("espresso crema", settings.embed_dim),
        limit=9,
        ef_search=40,
        exact=ExactScan(THRESHOLD),
    )
    async with app_db.driver_transaction(big_ws) as conn:
        ranked = await chunks.vector_ranked(conn, statements)
    assert ranked.strategy is VectorStrategy.HNSW and len(ranked.rows) == 9

    # The small workspace has no index: its statement cannot use the big one's.
    _, small_plan = await explain_hnsw(
        app_db, small_ws, as_workspace=small_ws, dim=settings.embed_dim
    )
    assert "ix_chunk_embedding_ws_" not in small_plan, small_plan


async def test_another_workspace_reads_nothing_through_an_index_not_its_own(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    big = await sign_up(gql, inbox, "big@example.com")
    await sign_up(gql, inbox, "other@example.com")
    for filename, pages in LIBRARY.items():
        await upload_ok(gql, filename, make_pdf(pages), big)
    big_ws = await workspace_of(settings, "big@example.com")
    other_ws = await workspace_of(settings, "other@example.com")
    await wait_for_index(settings, big_ws, valid=True)
    # Naming the big workspace in the statement makes the planner pick its index; the
    # policy, applied in the scan, still hides every row from the other workspace.
    rows, plan = await explain_hnsw(app_db, big_ws, as_workspace=other_ws, dim=settings.embed_dim)
    assert hnsw_scan(big_ws) in plan, plan
    assert rows == []


async def test_a_build_waits_for_the_workspace_s_ingestion_and_a_fall_back_drops(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    for filename, pages in LIBRARY.items():
        await upload_ok(gql, filename, make_pdf(pages), token)
    ws = await workspace_of(settings, "ada@example.com")
    await wait_for_index(settings, ws, valid=True)
    indexes = VectorIndexes(settings=settings, db=app_db.without_timeouts())
    exact = ExactScan(THRESHOLD)

    # While a document of the workspace is being ingested, a build is put off (re-queued).
    async with connect(settings) as conn:
        await vector_indexes.drop(conn, workspace_id=ws)
        await conn.execute("UPDATE document SET status = 'PARSING' WHERE filename = 'kitchen.pdf'")
        await conn.execute("DELETE FROM procrastinate_jobs")
    async with app_db.driver_transaction(ws) as conn:
        busy = await vector_indexes.state(conn, workspace_id=ws, exact=exact)
    assert (busy.action, busy.busy, busy.index) == (IndexAction.BUILD, True, None)
    await indexes.upkeep(ws)
    async with connect(settings) as conn:
        assert await vector_indexes.indexed_workspaces(conn) == []
        waiting = await conn.fetch(
            "SELECT args, scheduled_at > now() AS later FROM procrastinate_jobs"
            " WHERE task_name = $1 AND status = 'todo'",
            queue.VECTOR_INDEX_TASK,
        )
        assert [(r["later"], r["args"]) for r in waiting] == [(True, f'{{"workspace_id": "{ws}"}}')]
        await conn.execute("UPDATE document SET status = 'READY'")
        await conn.execute("DELETE FROM procrastinate_jobs")
    await indexes.upkeep(ws)
    await wait_for_index(settings, ws, valid=True)

    # Down to half the threshold (2 chunks of 9 left): the index goes.
    async with connect(settings) as conn:
        await conn.execute(
            "DELETE FROM chunk WHERE id NOT IN (SELECT id FROM chunk ORDER BY id LIMIT 2)"
        )
    async with app_db.transaction(ws) as session:
        assert await indexes.schedule(session, ws)  # queued: a drop is due
    await indexes.upkeep(ws)
    await wait_for_index(settings, ws, valid=False)


def test_what_an_index_needs() -> None:
    def action(chunks: int, index: bool | None, busy: bool = False) -> IndexAction | None:
        return IndexState(chunks=chunks, threshold=10, index=index, busy=busy).action

    assert action(11, None) is IndexAction.BUILD
    assert action(11, None, busy=True) is IndexAction.BUILD  # the job waits on `busy`
    assert action(11, False) is IndexAction.BUILD  # a failed build is replaced
    assert action(11, True) is None
    assert action(10, None) is None  # at the threshold the search is exact
    assert action(8, True) is None  # between half and the threshold: kept
    assert action(5, True) is IndexAction.DROP
    assert action(5, False) is IndexAction.DROP
    assert action(0, None) is None
