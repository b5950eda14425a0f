"""Isolation in the database itself: row-level security and a role that cannot bypass it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from alembic import command
from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.migrate import alembic_config
from rag_gql.db.session import APP_ROLE, SET_TENANT
from rag_gql.repositories import bm25, search_sql
from tests.conftest import TEST_EMBED_DIM, with_database
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox
from tests.support.sql import asyncpg_dsn, connect, workspace_of
from tests.support.uploads import upload_ok
from tests.support.vector_index import build_index, hnsw_scan

TENANT_TABLES = ("collection", "document", "chunk", "bm25_delta", "bm25_posting")
A_VECTOR = "[" + ",".join(["0.1"] * TEST_EMBED_DIM) + "]"
"""An embedding as pgvector text, for chunks written straight into the table."""


async def add_filler_chunks(
    conn: asyncpg.Connection, ws: uuid.UUID, document: uuid.UUID, count: int = 3000
) -> None:
    """Adds `count` chunks ('filler passage N', ordinals 10 + N) to `document`, then ANALYZE:
    a workspace big enough for the planner to prefer the GIN index."""
    await conn.execute(
        "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start, char_end,"
        " text, embedding) SELECT $1, $2, 10 + n, 3, 0, 20, 'filler passage ' || n, $3::vector"
        " FROM generate_series(1, $4::int) AS n",
        ws,
        document,
        A_VECTOR,
        count,
    )
    await conn.execute("ANALYZE chunk")


async def keyword_plan(db: Database, ws: uuid.UUID, query: str) -> tuple[str, int]:
    """The keyword statement's plan as the app role, and how many chunks it returns."""
    statement = bm25.ranking_statement(workspace_id=ws, query=query, limit=5)
    async with db.driver_transaction(ws) as conn:
        assert await conn.fetchval("SELECT current_user") == APP_ROLE
        explained = await conn.fetch("EXPLAIN " + statement.sql, *statement.args)
        found = await conn.fetch(statement.sql, *statement.args)
    return "\n".join(r[0] for r in explained), len(found)


async def test_app_role_cannot_bypass_rls(settings: Settings, app_db: Database) -> None:
    async with app_db.transaction() as session:
        role = (await session.execute(text("SELECT current_user"))).scalar_one()
        flags = (
            await session.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            )
        ).one()
        owned = (
            await session.execute(
                text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = current_user"
                )
            )
        ).scalar_one()
    assert role == APP_ROLE
    assert tuple(flags) == (False, False)
    assert owned == 0
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE relname = ANY($1::text[])",
            list(TENANT_TABLES),
        )
    # Forced (binding the tables' owner too), but for `chunk`: the `chunk_fts` view reads it
    # as the owner, without the policy (migration 0006); the app role is bound either way.
    assert {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"]) for r in rows} == {
        "collection": (True, True),
        "document": (True, True),
        "chunk": (True, False),
        "bm25_delta": (True, True),
        "bm25_posting": (True, True),
    }


async def test_a_query_without_its_filter_sees_only_its_workspace(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    for email, words in (("a@example.com", "apples"), ("b@example.com", "bananas")):
        token = await sign_up(gql, inbox, email)
        response = await gql.upload(f"{words}.pdf", make_pdf([f"All about {words}."]), token=token)
        assert "errors" not in response.json()
    ws_a = await workspace_of(settings, "a@example.com")
    ws_b = await workspace_of(settings, "b@example.com")

    # No WHERE clause at all: the policy alone keeps B's rows out.
    async with app_db.transaction(ws_a) as session:
        docs = (await session.execute(text("SELECT filename FROM document"))).scalars().all()
        chunk_ws = (
            (await session.execute(text("SELECT DISTINCT workspace_id FROM chunk"))).scalars().all()
        )
        by_id = (
            await session.execute(
                text("SELECT count(*) FROM document WHERE workspace_id = :ws"), {"ws": ws_b}
            )
        ).scalar_one()
    assert list(docs) == ["apples.pdf"]
    assert list(chunk_ws) == [ws_a]
    assert by_id == 0

    # Without a workspace set, a tenant table is empty.
    async with app_db.transaction() as session:
        for table in TENANT_TABLES:
            count = (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            assert count == 0, table

    # Writing into another workspace is refused by the policy's WITH CHECK.
    with pytest.raises(DBAPIError, match="row-level security"):
        async with app_db.transaction(ws_a) as session:
            await session.execute(
                text("INSERT INTO collection (id, workspace_id, name) VALUES (:id, :ws, 'x')"),
                {"id": uuid.uuid4(), "ws": ws_b},
            )
    # Nor can B's rows be changed or deleted from A's transaction.
    async with app_db.transaction(ws_a) as session:
        deleted = await session.execute(
            text("DELETE FROM document WHERE workspace_id = :ws"), {"ws": ws_b}
        )
        assert deleted.rowcount == 0  # type: ignore[attr-defined]
    async with connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM document") == 2


async def test_bm25_statistics_show_and_take_only_the_workspace_s_rows(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """`bm25_delta`: another workspace's statistics are invisible (by id or by word), cannot be
    written into, skewed, or deleted; and the app role may not UPDATE a row at all."""
    for email, words in (("sa@example.com", "apples"), ("sb@example.com", "bananas")):
        token = await sign_up(gql, inbox, email)
        doc = await upload_ok(gql, f"{words}.pdf", make_pdf([f"All about {words}."]), token=token)
        await gql.wait_for_document(doc["id"], token=token)
    ws_a = await workspace_of(settings, "sa@example.com")
    ws_b = await workspace_of(settings, "sb@example.com")
    async with app_db.driver_transaction(ws_a) as conn:
        seen = await conn.fetch("SELECT DISTINCT workspace_id FROM bm25_delta")
        other = await conn.fetchval(
            "SELECT count(*) FROM bm25_delta WHERE workspace_id = $1 OR lexeme = 'banana'", ws_b
        )
        deleted = await conn.execute("DELETE FROM bm25_delta WHERE workspace_id = $1", ws_b)
    assert [r[0] for r in seen] == [ws_a]
    assert other == 0
    assert deleted == "DELETE 0"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with app_db.driver_transaction(ws_a) as conn:
            await conn.execute(
                "INSERT INTO bm25_delta (workspace_id, lexeme, chunks) VALUES ($1, 'banana', 99)",
                ws_b,
            )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with app_db.driver_transaction(ws_a) as conn:
            await conn.execute("UPDATE bm25_delta SET chunks = 0")
    async with app_db.driver_transaction() as conn:  # no workspace set: empty
        assert await conn.fetchval("SELECT count(*) FROM bm25_delta") == 0
    async with connect(settings) as conn:
        assert (
            await conn.fetchval(
                "SELECT sum(chunks) FROM bm25_delta WHERE workspace_id = $1 AND lexeme = 'banana'",
                ws_b,
            )
            == 1
        )


async def test_bm25_postings_show_and_take_only_the_workspace_s_rows(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """`bm25_posting`: another workspace's postings are invisible (by id, by word, through the
    ranking's own statement), cannot be written into, forged, or deleted (by the triggers'
    own path neither: deleting one's chunks removes only one's postings); no UPDATE at all."""
    for email, words in (("pa@example.com", "apples"), ("pb@example.com", "bananas")):
        token = await sign_up(gql, inbox, email)
        doc = await upload_ok(gql, f"{words}.pdf", make_pdf([f"All about {words}."]), token=token)
        await gql.wait_for_document(doc["id"], token=token)
    ws_a = await workspace_of(settings, "pa@example.com")
    ws_b = await workspace_of(settings, "pb@example.com")
    async with connect(settings) as conn:
        b_chunk = await conn.fetchval("SELECT id FROM chunk WHERE workspace_id = $1", ws_b)
        b_postings = await conn.fetchval(
            "SELECT count(*) FROM bm25_posting WHERE workspace_id = $1", ws_b
        )
    assert b_postings > 0
    async with app_db.driver_transaction(ws_a) as conn:
        seen = await conn.fetch("SELECT DISTINCT workspace_id FROM bm25_posting")
        other = await conn.fetchval(
            "SELECT count(*) FROM bm25_posting WHERE workspace_id = $1 OR lexeme = 'banana'"
            " OR chunk_id = $2",
            ws_b,
            b_chunk,
        )
        idf = {"banana": 1.0}
        by_rounds = bm25.round_statement(
            workspace_id=ws_b, idf=idf, depth=10, limit=5, k1=1.2, b=0.75, avgdl=9, factor=1.0
        )
        every = bm25.exhaustive_statement(
            workspace_id=ws_b, idf=idf, limit=5, k1=1.2, b=0.75, avgdl=9
        )
        through_ranking = [
            *await conn.fetch(by_rounds.sql, *by_rounds.args),
            *await conn.fetch(every.sql, *every.args),
        ]
        deleted = await conn.execute("DELETE FROM bm25_posting WHERE workspace_id = $1", ws_b)
        # A's own chunks deleted: the trigger removes A's postings, never B's.
        await conn.execute("DELETE FROM chunk")
        assert await conn.fetchval("SELECT count(*) FROM bm25_posting") == 0
    assert [r[0] for r in seen] == [ws_a]
    assert other == 0
    assert through_ranking == []
    assert deleted == "DELETE 0"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with app_db.driver_transaction(ws_a) as conn:
            await conn.execute(
                "INSERT INTO bm25_posting (workspace_id, lexeme, impact, chunk_id, tf, length)"
                " VALUES ($1, 'banana', 99, $2, 1, 1)",
                ws_b,
                b_chunk,
            )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with app_db.driver_transaction(ws_b) as conn:
            await conn.execute("UPDATE bm25_posting SET impact = 99")
    async with app_db.driver_transaction() as conn:  # no workspace set: empty
        assert await conn.fetchval("SELECT count(*) FROM bm25_posting") == 0
    async with connect(settings) as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM bm25_posting WHERE workspace_id = $1", ws_b)
            == b_postings
        )


async def test_vector_search_uses_the_workspace_s_index_under_rls(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """The search's statement, as the app role under the policy, reads the workspace's own
    partial HNSW index (migration 0016); another workspace reading through it sees nothing
    (tests/test_vector_indexes.py builds them through the job)."""
    token = await sign_up(gql, inbox, "plan@example.com")
    await gql.upload("p.pdf", make_pdf(["pgvector plans", "hnsw index"]), token=token)
    other = await sign_up(gql, inbox, "other@example.com")
    await gql.upload("o.pdf", make_pdf(["other plans"]), token=other)
    ws = await workspace_of(settings, "plan@example.com")
    other_ws = await workspace_of(settings, "other@example.com")
    await build_index(settings, ws)
    sql = (
        "SELECT id FROM chunk c WHERE c.workspace_id = $1"
        " ORDER BY c.embedding <=> $2::vector LIMIT 5"
    )
    for scope, expected in ((ws, 2), (other_ws, 0)):  # p.pdf: two pages, a chunk each
        async with app_db.driver_transaction(scope) as conn:
            # The table is tiny; make the planner show what it does when the index pays off.
            await conn.execute("SET LOCAL enable_seqscan = off")
            await conn.execute("SET LOCAL enable_sort = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, ws, A_VECTOR))
            rows = await conn.fetch(sql, ws, A_VECTOR)
        assert hnsw_scan(ws) in plan, plan
        assert "app.workspace_id" in plan, plan  # the policy is applied inside the index scan
        assert len(rows) == expected  # another workspace's scope: none of ws's chunks


async def test_keyword_search_uses_the_gin_index_as_the_app_role(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """`@@` is not LEAKPROOF: on `chunk` itself the policy keeps it out of the GIN index (every
    chunk of the workspace read and filtered); the keyword statement reads `chunk_fts`."""
    token = await sign_up(gql, inbox, "fts@example.com")
    await upload_ok(gql, "f.pdf", make_pdf(["tsvector plans", "gin index"]), token=token)
    ws = await workspace_of(settings, "fts@example.com")
    async with connect(settings) as conn:  # a workspace where the index pays off
        document = await conn.fetchval("SELECT id FROM document WHERE workspace_id = $1", ws)
        await add_filler_chunks(conn, ws, document)
    plan, found = await keyword_plan(app_db, ws, "gin plans")
    assert "Bitmap Index Scan on ix_chunk_tsv" in plan, plan
    assert "ix_bm25_delta_workspace_lexeme" in plan, plan
    assert found == 2


async def test_bm25_postings_are_read_best_first_through_their_key_as_the_app_role(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """The policy on `bm25_posting` does not keep the ranking off its key: each lexeme's
    postings are a backward range scan of `pk_bm25_posting`, not a read of the table."""
    token = await sign_up(gql, inbox, "postings@example.com")
    await upload_ok(gql, "f.pdf", make_pdf(["tsvector plans", "gin index"]), token=token)
    ws = await workspace_of(settings, "postings@example.com")
    async with connect(settings) as conn:
        document = await conn.fetchval("SELECT id FROM document WHERE workspace_id = $1", ws)
        await add_filler_chunks(conn, ws, document)
        await conn.execute("ANALYZE bm25_posting")
    idf = {"filler": 0.1, "plan": 5.0}
    by_rounds = bm25.round_statement(
        workspace_id=ws, idf=idf, depth=8, limit=5, k1=1.2, b=0.75, avgdl=3.0, factor=1.0
    )
    every = bm25.exhaustive_statement(workspace_id=ws, idf=idf, limit=5, k1=1.2, b=0.75, avgdl=3)
    async with app_db.driver_transaction(ws) as conn:
        for statement in (by_rounds, every):
            explained = await conn.fetch("EXPLAIN " + statement.sql, *statement.args)
            plan = "\n".join(r[0] for r in explained)
            assert "Scan Backward using pk_bm25_posting" in plan or statement is every, plan
            assert "using pk_bm25_posting" in plan, plan
            assert "Seq Scan on bm25_posting" not in plan, plan
        rows = await conn.fetch(every.sql, *every.args)
    assert len(rows) == 5


async def test_the_keyword_view_holds_only_the_current_workspace_and_is_read_only(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    for email, words in (("va@example.com", "apples"), ("vb@example.com", "bananas")):
        token = await sign_up(gql, inbox, email)
        await upload_ok(gql, f"{words}.pdf", make_pdf([f"All about {words}."]), token=token)
    ws_a = await workspace_of(settings, "va@example.com")
    ws_b = await workspace_of(settings, "vb@example.com")
    async with app_db.driver_transaction(ws_a) as conn:
        seen = await conn.fetch("SELECT DISTINCT workspace_id FROM chunk_fts")
        # B's id or B's words: nothing of B's through A's transaction.
        other = await conn.fetchval(
            "SELECT count(*) FROM chunk_fts WHERE workspace_id = $1 "
            "OR tsv @@ to_tsquery('english', 'bananas')",
            ws_b,
        )
    assert [r[0] for r in seen] == [ws_a]
    assert other == 0
    async with app_db.driver_transaction() as conn:  # no workspace set: empty
        assert await conn.fetchval("SELECT count(*) FROM chunk_fts") == 0
    for statement in (
        "UPDATE chunk_fts SET workspace_id = $1",
        "DELETE FROM chunk_fts WHERE workspace_id <> $1",
        "INSERT INTO chunk_fts (workspace_id) VALUES ($1)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with app_db.driver_transaction(ws_a) as conn:
                await conn.execute(statement, ws_b)
    async with connect(settings) as conn:
        assert await conn.fetchval("SELECT count(DISTINCT workspace_id) FROM chunk") == 2


async def test_a_non_superuser_owner_migrates_and_serves(postgres_url: str) -> None:
    """The `DATABASE_URL` set-up (docs/operations.md): a CREATEROLE user, not a superuser, owns the
    database and runs the migrations. On PostgreSQL 16+ such a user is made a member of roles
    it creates with ADMIN but without SET (the state given to it here, `rag_gql_app` existing
    cluster-wide already), and `SET ROLE rag_gql_app` failed until migration 0007. Keyword
    search then uses the GIN index as the app role: `chunk_fts` reads `chunk` as this owner."""
    suffix = uuid.uuid4().hex[:12]
    name, owner = f"own_{suffix}", f"owner_{suffix}"
    dsn = asyncpg_dsn(Settings(_env_file=None, database_url=postgres_url))
    admin = await asyncpg.connect(dsn)
    if not await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        await admin.close()
        pytest.skip("creating a role needs a superuser on the test server")
    await admin.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN"
        f" CREATE ROLE {APP_ROLE} NOLOGIN; END IF; END $$"
    )
    await admin.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD 'owner-pw'")
    if await admin.fetchval("SHOW server_version_num") >= "160000":
        await admin.execute(
            f"GRANT {APP_ROLE} TO {owner} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE"
        )
    else:
        await admin.execute(f"GRANT {APP_ROLE} TO {owner} WITH ADMIN OPTION")
    await admin.execute(f'CREATE DATABASE "{name}" OWNER {owner}')
    await admin.close()
    admin_url = with_database(postgres_url, name)
    async with connect(Settings(_env_file=None, database_url=admin_url)) as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # a DBA's step
    url = make_url(admin_url).set(username=owner, password="owner-pw")
    owner_url = url.render_as_string(hide_password=False)
    settings = Settings(_env_file=None, database_url=owner_url)
    db: Database | None = None
    try:
        config = alembic_config(owner_url, embed_dim=TEST_EMBED_DIM)
        await asyncio.to_thread(command.upgrade, config, "head")
        ws, doc = uuid.uuid4(), uuid.uuid4()
        async with connect(settings) as conn:
            await conn.execute(
                "INSERT INTO workspace (id, name, personal) VALUES ($1, 'w', true)", ws
            )
            async with conn.transaction():
                await conn.execute(SET_TENANT, str(ws))
                await conn.execute(
                    "INSERT INTO document (id, workspace_id, filename, sha256, media_type,"
                    " size_bytes, page_count, chunk_count, status) VALUES"
                    " ($1, $2, 'a.pdf', 'ab', 'application/pdf', 1, 1, 1, 'READY')",
                    doc,
                    ws,
                )
                await conn.execute(
                    "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start,"
                    " char_end, text, embedding)"
                    " VALUES ($1, $2, 0, 1, 0, 9, 'gin plans', $3::vector)",
                    ws,
                    doc,
                    A_VECTOR,
                )
                await add_filler_chunks(conn, ws, doc)
        db = Database(owner_url)
        plan, found = await keyword_plan(db, ws, "gin plans")
        assert "Bitmap Index Scan on ix_chunk_tsv" in plan, plan
        assert found == 1
    finally:
        if db is not None:
            await db.dispose()
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()


async def test_upgrade_from_the_skeleton_keeps_documents(postgres_url: str) -> None:
    """A database made by revision 0001 keeps each user's documents in their workspace."""
    name = f"up_{uuid.uuid4().hex[:12]}"
    dsn = asyncpg_dsn(Settings(_env_file=None, database_url=postgres_url))
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    settings = Settings(_env_file=None, database_url=with_database(postgres_url, name))
    url = str(settings.database_url)
    try:
        config = alembic_config(url, embed_dim=TEST_EMBED_DIM)
        await asyncio.to_thread(command.upgrade, config, "0001")
        user, ws, doc = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        async with connect(settings) as conn:
            await conn.execute(
                'INSERT INTO "user" (id, email, password_hash, verified_at) '
                "VALUES ($1, 'old@example.com', 'x', now())",
                user,
            )
            await conn.execute(
                "INSERT INTO workspace (id, name, personal) VALUES ($1, 'p', true)", ws
            )
            await conn.execute(
                "INSERT INTO membership (workspace_id, user_id, role) VALUES ($1, $2, 'OWNER')",
                ws,
                user,
            )
            await conn.execute(
                "INSERT INTO document (id, workspace_id, filename, sha256, media_type, size_bytes, "
                "page_count, chunk_count, status) VALUES ($1, $2, 'old.pdf', 'ab', "
                "'application/pdf', 1, 1, 1, 'READY')",
                doc,
                ws,
            )
            vector = "[" + ",".join(["0.5"] * TEST_EMBED_DIM) + "]"
            await conn.execute(
                "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start, "
                "char_end, text, embedding) VALUES ($1, $2, 0, 1, 0, 3, 'old', $3::vector)",
                ws,
                doc,
                vector,
            )
        await asyncio.to_thread(command.upgrade, config, "head")
        db = Database(url)
        try:
            async with db.transaction(ws) as session:
                names = (await session.execute(text("SELECT filename FROM document"))).scalars()
                assert list(names) == ["old.pdf"]
                chunks = (await session.execute(text("SELECT count(*) FROM chunk"))).scalar_one()
                assert chunks == 1
        finally:
            await db.dispose()
        await asyncio.to_thread(command.downgrade, config, "0001")
    finally:
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


AUTH_TABLES = ("membership", "api_key", "invitation", "refresh_token")


async def _auth_rows(settings: Settings) -> dict[str, uuid.UUID]:
    """Users A and B, workspaces WA (A) and WB (B, and A as a VIEWER), one API key and one
    invitation per workspace (hashes `key-a`, `key-b`, `inv-a`, `inv-b`), one refresh token per
    user (`rt-a`, `rt-b`); written as the test's own superuser, past the policies."""
    ids = {name: uuid.uuid4() for name in ("a", "b", "wa", "wb")}
    async with connect(settings) as conn:
        for user in ("a", "b"):
            await conn.execute(
                'INSERT INTO "user" (id, email, password_hash) VALUES ($1, $2, $3)',
                ids[user],
                f"{user}@example.com",
                "!",
            )
            await conn.execute(
                "INSERT INTO refresh_token (id, user_id, family_id, token_hash, expires_at)"
                " VALUES ($1, $2, $3, $4, now() + interval '1 day')",
                uuid.uuid4(),
                ids[user],
                uuid.uuid4(),
                f"rt-{user}",
            )
        for ws in ("wa", "wb"):
            suffix = ws[1]
            await conn.execute(
                "INSERT INTO workspace (id, name, personal) VALUES ($1, $2, false)", ids[ws], ws
            )
            await conn.execute(
                "INSERT INTO api_key (id, workspace_id, name, role, prefix, key_hash)"
                " VALUES ($1, $2, 'k', 'VIEWER', 'p', $3)",
                uuid.uuid4(),
                ids[ws],
                f"key-{suffix}",
            )
            await conn.execute(
                "INSERT INTO invitation (id, workspace_id, email, role, token_hash, expires_at)"
                " VALUES ($1, $2, 'c@example.com', 'VIEWER', $3, now() + interval '1 day')",
                uuid.uuid4(),
                ids[ws],
                f"inv-{suffix}",
            )
        for ws, user, role in (("wa", "a", "OWNER"), ("wb", "b", "OWNER"), ("wb", "a", "VIEWER")):
            await conn.execute(
                "INSERT INTO membership (workspace_id, user_id, role) VALUES ($1, $2, $3)",
                ids[ws],
                ids[user],
                role,
            )
    return ids


async def _seen(db: Database, **scope: uuid.UUID | str) -> dict[str, set[tuple[str, ...]]]:
    """What each auth table shows the app role in one transaction of `scope`, no WHERE."""
    queries = {
        "membership": "SELECT workspace_id::text, user_id::text FROM membership",
        "api_key": "SELECT key_hash FROM api_key",
        "invitation": "SELECT token_hash FROM invitation",
        "refresh_token": "SELECT token_hash FROM refresh_token",
    }
    async with db.driver_transaction(**scope) as conn:  # type: ignore[arg-type]
        assert await conn.fetchval("SELECT current_user") == APP_ROLE
        return {t: {tuple(r) for r in await conn.fetch(q)} for t, q in queries.items()}


async def test_the_auth_tables_show_only_the_scope_s_rows(
    settings: Settings, app_db: Database
) -> None:
    ids = await _auth_rows(settings)
    a, wa, wb = (str(ids[k]) for k in ("a", "wa", "wb"))
    async with connect(settings) as conn:
        flags = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE relname = ANY($1::text[])",
            list(AUTH_TABLES),
        )
    assert {r["relname"]: (r[1], r[2]) for r in flags} == dict.fromkeys(AUTH_TABLES, (True, True))

    nothing: dict[str, set[tuple[str, ...]]] = {table: set() for table in AUTH_TABLES}
    assert await _seen(app_db) == nothing
    # The workspace: its members (A's membership of WB shows only within WB), keys, invitations.
    assert await _seen(app_db, workspace_id=ids["wa"]) == nothing | {
        "membership": {(wa, a)},
        "api_key": {("key-a",)},
        "invitation": {("inv-a",)},
    }
    # The user: their memberships everywhere (not B's of WB), their refresh tokens.
    assert await _seen(app_db, user_id=ids["a"]) == nothing | {
        "membership": {(wa, a), (wb, a)},
        "refresh_token": {("rt-a",)},
    }
    # A lookup by secret: the one row with that hash, in whichever table holds it.
    for secret, table in (("key-b", "api_key"), ("inv-b", "invitation"), ("rt-b", "refresh_token")):
        assert await _seen(app_db, lookup_hash=secret) == nothing | {table: {(secret,)}}
    assert await _seen(app_db, lookup_hash="") == nothing


async def test_the_auth_tables_refuse_writes_outside_the_scope(
    settings: Settings, app_db: Database
) -> None:
    ids = await _auth_rows(settings)
    refused = [
        # Into another workspace than the current one.
        (
            {"workspace_id": ids["wa"]},
            "INSERT INTO membership (workspace_id, user_id, role) VALUES ($1, $2, 'OWNER')",
            (ids["wb"], ids["b"]),
        ),
        (
            {"workspace_id": ids["wa"]},
            "INSERT INTO api_key (id, workspace_id, name, role, prefix, key_hash)"
            " VALUES (gen_random_uuid(), $1, 'x', 'OWNER', 'p', $2)",
            (ids["wb"], "key-x"),
        ),
        (
            {"workspace_id": ids["wa"]},
            "INSERT INTO invitation (id, workspace_id, email, role, token_hash, expires_at)"
            " VALUES (gen_random_uuid(), $1, 'x@example.com', 'OWNER', $2, now())",
            (ids["wb"], "inv-x"),
        ),
        # A user may read their memberships, not add one anywhere.
        (
            {"user_id": ids["a"]},
            "INSERT INTO membership (workspace_id, user_id, role) VALUES ($1, $2, 'OWNER')",
            (ids["wb"], ids["a"]),
        ),
        # Another user's refresh token.
        (
            {"user_id": ids["a"]},
            "INSERT INTO refresh_token (id, user_id, family_id, token_hash, expires_at)"
            " VALUES (gen_random_uuid(), $1, gen_random_uuid(), $2, now())",
            (ids["b"], "rt-x"),
        ),
        # A looked-up token may be locked, not changed, without its user's scope.
        ({"lookup_hash": "rt-b"}, "UPDATE refresh_token SET revoked_at = now()", ()),
        ({"lookup_hash": "inv-b"}, "UPDATE invitation SET accepted_at = now()", ()),
    ]
    for scope, statement, args in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with app_db.driver_transaction(**scope) as conn:  # type: ignore[arg-type]
                await conn.execute(statement, *args)
    # Changing or deleting rows outside the scope touches none.
    untouched = [
        ({"workspace_id": ids["wa"]}, "DELETE FROM membership WHERE workspace_id = $1", ids["wb"]),
        ({"workspace_id": ids["wa"]}, "DELETE FROM api_key WHERE workspace_id = $1", ids["wb"]),
        (
            {"workspace_id": ids["wa"]},
            "UPDATE invitation SET role = 'OWNER' WHERE workspace_id = $1",
            ids["wb"],
        ),
        ({"user_id": ids["a"]}, "DELETE FROM membership WHERE workspace_id = $1", ids["wb"]),
        ({"user_id": ids["a"]}, "DELETE FROM refresh_token WHERE user_id = $1", ids["b"]),
        (
            {"lookup_hash": "key-b"},
            "UPDATE api_key SET revoked_at = now() WHERE workspace_id = $1",
            ids["wb"],
        ),
    ]
    for scope, statement, arg in untouched:
        async with app_db.driver_transaction(**scope) as conn:  # type: ignore[arg-type]
            assert await conn.execute(statement, arg) in ("DELETE 0", "UPDATE 0"), statement
    async with app_db.driver_transaction(lookup_hash="inv-b") as conn:
        locked = await conn.fetch("SELECT token_hash FROM invitation FOR UPDATE")
    assert [r[0] for r in locked] == ["inv-b"]
    async with connect(settings) as conn:
        counts = [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in AUTH_TABLES]
    assert counts == [3, 2, 2, 2]


async def test_answer_events_show_and_take_only_the_workspace_s_rows(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    ask = 'mutation { ask(question: "What is in my notes?") { messageId } }'
    answers: dict[uuid.UUID, uuid.UUID] = {}
    for email in ("a@example.com", "b@example.com"):
        token = await sign_up(gql, inbox, email)
        message_id = (await gql.data(ask, token=token))["ask"]["messageId"]
        answers[await workspace_of(settings, email)] = uuid.UUID(message_id)
    (ws_a, answer_a), (ws_b, answer_b) = answers.items()
    async with connect(settings) as conn:
        flags = await conn.fetchrow(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE relname = 'answer_event'"
        )
        assert flags is not None and tuple(flags) == (True, True)
        assert await conn.fetchval("SELECT count(DISTINCT workspace_id) FROM answer_event") == 2

    # No WHERE clause: the policy alone keeps B's events out; none without a workspace.
    async with app_db.transaction(ws_a) as session:
        seen = (
            await session.execute(text("SELECT DISTINCT message_id FROM answer_event"))
        ).scalars()
        assert list(seen) == [answer_a]
        changed = await session.execute(
            text("UPDATE answer_event SET payload = '{}' WHERE message_id = :m"), {"m": answer_b}
        )
        assert changed.rowcount == 0  # type: ignore[attr-defined]
        deleted = await session.execute(
            text("DELETE FROM answer_event WHERE workspace_id = :ws"), {"ws": ws_b}
        )
        assert deleted.rowcount == 0  # type: ignore[attr-defined]
    async with app_db.transaction() as session:
        assert (await session.execute(text("SELECT count(*) FROM answer_event"))).scalar_one() == 0
    # Events written into B's answer from A's transaction, with either workspace, are refused:
    # B's workspace by the policy's WITH CHECK, A's by the foreign key on (workspace, message):
    # B's message is not in A's workspace (a foreign key is checked without the policies).
    for workspace in (ws_b, ws_a):
        with pytest.raises(DBAPIError):
            async with app_db.transaction(ws_a) as session:
                await session.execute(
                    text(
                        "INSERT INTO answer_event (message_id, seq, last_seq, workspace_id, kind,"
                        " payload) VALUES (:m, 99, 99, :ws, 'tokens', '{\"texts\": [\"x\"]}')"
                    ),
                    {"m": answer_b, "ws": workspace},
                )
    async with connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM answer_event WHERE seq = 99") == 0


async def test_document_metadata_is_read_and_written_only_in_its_workspace(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, app_db: Database
) -> None:
    """`document.metadata` is under `document`'s policy: a filter on it, a raw `@>` or `?`,
    and an UPDATE of it from another workspace's transaction see and touch nothing; the
    metadata filter's own SQL, run for A, finds none of B's tagged documents."""
    from rag_gql.repositories.metadata_sql import MetadataCondition, MetadataOp

    for email, words in (("a@example.com", "apples"), ("b@example.com", "bananas")):
        token = await sign_up(gql, inbox, email)
        response = await gql.upload(
            f"{words}.pdf",
            make_pdf([f"All about {words}."]),
            token=token,
            metadata={"fruit": words, "shared": "yes"},
        )
        assert "errors" not in response.json(), response.text
    ws_a = await workspace_of(settings, "a@example.com")
    ws_b = await workspace_of(settings, "b@example.com")

    async with app_db.transaction(ws_a) as session:
        tagged = await session.execute(
            text('SELECT filename FROM document WHERE metadata @> \'{"fruit": "bananas"}\'')
        )
        assert list(tagged.scalars()) == []
        shared = await session.execute(
            text("SELECT filename FROM document WHERE metadata ? 'shared'")
        )
        assert list(shared.scalars()) == ["apples.pdf"]
        updated = await session.execute(
            text("UPDATE document SET metadata = '{\"owned\": true}' WHERE workspace_id = :ws"),
            {"ws": ws_b},
        )
        assert updated.rowcount == 0  # type: ignore[attr-defined]
    # The search's scope with a metadata condition, for A, without naming B at all.
    scope = search_sql.ChunkScope(metadata=[MetadataCondition("shared", MetadataOp.EQ, ("yes",))])
    statements = search_sql.vector_statements(
        workspace_id=ws_a,
        embedding=[0.1] * TEST_EMBED_DIM,
        limit=10,
        ef_search=40,
        exact=search_sql.ExactScan(1000),
        scope=scope,
    )
    async with app_db.driver_transaction(ws_a) as conn:
        rows = await conn.fetch(statements.exact.sql, *statements.exact.args)
        owners = {
            r[0]
            for r in await conn.fetch(
                "SELECT DISTINCT workspace_id FROM chunk WHERE id = ANY($1::bigint[])",
                [r[0] for r in rows],
            )
        }
    assert rows and owners == {ws_a}
    async with connect(settings) as conn:
        stored = dict(await conn.fetch("SELECT filename, metadata::text FROM document"))
    assert stored == {
        "apples.pdf": '{"fruit": "apples", "shared": "yes"}',
        "bananas.pdf": '{"fruit": "bananas", "shared": "yes"}',
    }
