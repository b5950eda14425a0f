"""The schema's keys against what a PostgreSQL sharded by `workspace_id` (Citus) accepts.

Read from `pg_catalog` of the migrated database, so docs/operations.md ("Scaling out") stays
true: every foreign key between tenant tables includes `workspace_id` on both sides, and the
primary and unique keys that do not are exactly the ones that page lists as still to change.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from rag_gql.db.migrate import alembic_config
from rag_gql.db.models import Base
from tests.conftest import TEST_EMBED_DIM

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"

KEYS_WITHOUT_WORKSPACE = {
    "pk_api_key": "api_key",
    "pk_chunk": "chunk",
    "pk_collection": "collection",
    "pk_conversation": "conversation",
    "pk_document": "document",
    "pk_document_file_part": "document_file_part",
    "pk_invitation": "invitation",
    "pk_message": "message",
    "uq_api_key_key_hash": "api_key",
    "uq_invitation_token_hash": "invitation",
}
"""Primary and unique keys of tables with a `workspace_id` that do not include it: what
Citus would refuse, listed with their fix and cost in docs/operations.md."""

TENANT_KEYS = """
SELECT c.conname, c.contype::text, t.relname AS child, p.relname AS parent,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(num, i)
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
             ORDER BY k.i) AS columns,
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(num, i)
              JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
             ORDER BY k.i) AS referenced
  FROM pg_constraint c
  JOIN pg_class t ON t.oid = c.conrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
  LEFT JOIN pg_class p ON p.oid = c.confrelid
 WHERE c.contype IN ('p', 'u', 'f')
   AND EXISTS (SELECT FROM pg_attribute a
                WHERE a.attrelid = t.oid AND a.attname = 'workspace_id' AND NOT a.attisdropped)
"""


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The migrated test database, as its owner (row-level security does not bind it)."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def tenant_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(TENANT_KEYS))


async def test_references_between_tenant_tables_include_the_workspace(
    owner: asyncpg.Connection,
) -> None:
    keys = await tenant_keys(owner)
    tenant_tables = {key["child"] for key in keys}
    references = [k for k in keys if k["contype"] == "f" and k["parent"] in tenant_tables]
    assert {k["conname"] for k in references} >= {
        "fk_document_collection_id_collection",
        "fk_document_file_part_document_id_document",
        "fk_chunk_document_id_document",
        "fk_conversation_api_key_id_api_key",
        "fk_message_conversation_id_conversation",
    }
    without = [
        f"{k['conname']}: {k['columns']} -> {k['parent']} {k['referenced']}"
        for k in references
        if "workspace_id" not in k["columns"] or "workspace_id" not in k["referenced"]
    ]
    assert without == []
    # and workspace_id references workspace_id, as colocated tables' keys must
    for k in references:
        position = k["columns"].index("workspace_id")
        assert k["referenced"][position] == "workspace_id", k["conname"]


async def test_keys_without_the_workspace_are_the_ones_the_docs_list(
    owner: asyncpg.Connection,
) -> None:
    keys = await tenant_keys(owner)
    found = {
        k["conname"]: k["child"]
        for k in keys
        if k["contype"] in ("p", "u") and "workspace_id" not in k["columns"]
    }
    assert found == KEYS_WITHOUT_WORKSPACE, (
        "a primary or unique key without workspace_id was added or fixed: update "
        "KEYS_WITHOUT_WORKSPACE and the table in docs/operations.md, 'Scaling out'"
    )
    documented = OPERATIONS.read_text(encoding="utf-8").split("## Scaling out", 1)[1]
    assert [name for name in found if f"`{name}`" not in documented] == []


async def workspace(conn: asyncpg.Connection) -> uuid.UUID:
    ws = uuid.uuid4()
    await conn.execute("INSERT INTO workspace (id, name) VALUES ($1, 'w')", ws)
    return ws


async def document(
    conn: asyncpg.Connection, ws: uuid.UUID, collection: uuid.UUID | None = None
) -> uuid.UUID:
    doc = uuid.uuid4()
    await conn.execute(
        "INSERT INTO document (id, workspace_id, collection_id, filename, sha256, media_type,"
        " size_bytes, page_count, chunk_count, status)"
        " VALUES ($1, $2, $3, 'a.txt', $4, 'text/plain', 1, 1, 1, 'READY')",
        doc,
        ws,
        collection,
        uuid.uuid4().hex,
    )
    return doc


async def test_a_row_cannot_reference_a_parent_in_another_workspace(
    owner: asyncpg.Connection,
) -> None:
    a, b = await workspace(owner), await workspace(owner)
    collection = uuid.uuid4()
    await owner.execute(
        "INSERT INTO collection (id, workspace_id, name) VALUES ($1, $2, 'c')", collection, a
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await document(owner, b, collection)
    doc = await document(owner, a)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await owner.execute(
            "INSERT INTO document_file_part (document_id, seq, workspace_id, data)"
            " VALUES ($1, 0, $2, 'x')",
            doc,
            b,
        )
    dim = await owner.fetchval(
        "SELECT atttypmod FROM pg_attribute"
        " WHERE attrelid = 'chunk'::regclass AND attname = 'embedding'"
    )
    vector = "[" + ",".join(["0.1"] * dim) + "]"
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await owner.execute(
            "INSERT INTO chunk (workspace_id, document_id, ordinal, page, char_start, char_end,"
            " text, embedding) VALUES ($1, $2, 0, 1, 0, 1, 'x', $3::vector)",
            b,
            doc,
            vector,
        )
    conversation = uuid.uuid4()
    await owner.execute(
        "INSERT INTO conversation (id, workspace_id, title) VALUES ($1, $2, 't')", conversation, a
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await owner.execute(
            "INSERT INTO message (workspace_id, conversation_id, role, content, status, id)"
            " VALUES ($1, $2, 'user', 'q', 'complete', $3)",
            b,
            conversation,
            uuid.uuid4(),
        )
    key = uuid.uuid4()
    await owner.execute(
        "INSERT INTO api_key (id, workspace_id, name, role, prefix, key_hash)"
        " VALUES ($1, $2, 'k', 'VIEWER', 'p', $3)",
        key,
        a,
        uuid.uuid4().hex,
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await owner.execute(
            "INSERT INTO conversation (id, workspace_id, api_key_id, title)"
            " VALUES ($1, $2, $3, 't')",
            uuid.uuid4(),
            b,
            key,
        )


async def test_deletes_still_cascade_through_the_composite_keys(
    owner: asyncpg.Connection,
) -> None:
    ws = await workspace(owner)
    collection = uuid.uuid4()
    await owner.execute(
        "INSERT INTO collection (id, workspace_id, name) VALUES ($1, $2, 'c')", collection, ws
    )
    in_collection, loose = await document(owner, ws, collection), await document(owner, ws)
    await owner.execute(
        "INSERT INTO document_file_part (document_id, seq, workspace_id, data)"
        " VALUES ($1, 0, $2, 'x')",
        loose,
        ws,
    )
    await owner.execute("DELETE FROM collection WHERE id = $1", collection)
    assert await owner.fetchval("SELECT count(*) FROM document WHERE id = $1", in_collection) == 0
    await owner.execute("DELETE FROM document WHERE id = $1", loose)
    assert await owner.fetchval("SELECT count(*) FROM document_file_part") == 0


def key_differences(connection: Connection) -> list[Any]:
    """What autogenerate would change in foreign and unique keys to match the models."""
    kinds = {"add_fk", "remove_fk", "add_constraint", "remove_constraint"}
    tables = set(Base.metadata.tables)
    found = []
    for diff in compare_metadata(MigrationContext.configure(connection), Base.metadata):
        first = diff[0] if isinstance(diff, list) else diff
        table = getattr(first[1], "table", None)
        if first[0] in kinds and table is not None and table.name in tables:
            found.append(first)
    return found


async def test_models_declare_the_keys_the_migrations_make(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(key_differences) == []
    finally:
        await engine.dispose()


async def test_the_migration_reverts_to_single_column_references(
    database_url: str, owner: asyncpg.Connection
) -> None:
    config = alembic_config(database_url, embed_dim=TEST_EMBED_DIM)
    await asyncio.to_thread(command.downgrade, config, "0011-1")
    keys = {k["conname"]: k for k in await tenant_keys(owner)}
    assert keys["fk_chunk_document_id_document"]["columns"] == ["document_id"]
    assert "uq_document_id_workspace_id" not in keys
    await asyncio.to_thread(command.upgrade, config, "head")
    keys = {k["conname"]: k for k in await tenant_keys(owner)}
    assert keys["fk_chunk_document_id_document"]["columns"] == ["document_id", "workspace_id"]
