"""Per-workspace HNSW indexes on `chunk.embedding` (migration 0016): only where a search uses one.

A workspace whose chunks are more than the exact-scan threshold (`search_sql.ExactScan`) is
searched through an index; below it, by an exact scan no index serves. So each workspace
above it has a partial index of its own, `index_name(workspace_id)`
(`USING hnsw (embedding vector_cosine_ops) WHERE workspace_id = '<id>'`), and the others none:
their chunks cost no HNSW upkeep. The search's statement is unchanged
(`search_sql.vector_statements`): its custom plan carries the workspace as a constant, which
lets the planner prove the partial index's predicate; without an index yet, the same
statement sorts the workspace's distances (exact, slower).

`state` reads what a workspace has and needs, as the app role in the workspace's
transaction; `build` and `drop` run on an owner's connection outside any transaction
(`Database.owner_connection`: `CONCURRENTLY` never runs in one, and only the table's owner
may index it). The workspace id is formatted into the DDL (an index predicate cannot be a
parameter): it is a `uuid.UUID`, whose text is hex digits and dashes only.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

import asyncpg

from rag_gql.repositories.search_sql import ExactScan

PREFIX = "ix_chunk_embedding_ws_"
"""The start of every per-workspace vector index's name (then the workspace id in hex)."""

_UNFINISHED = ("QUEUED", "PARSING", "EMBEDDING")


def index_name(workspace_id: uuid.UUID) -> str:
    """The name of the workspace's vector index (54 characters, under PostgreSQL's 63)."""
    return PREFIX + uuid.UUID(str(workspace_id)).hex


class IndexAction(enum.Enum):
    """What a workspace's vector index needs (`IndexState.action`)."""

    BUILD = "BUILD"
    DROP = "DROP"


@dataclass(frozen=True, slots=True)
class IndexState:
    """A workspace's chunks against the threshold, and its index.

    `chunks`: counted up to `threshold` + 1 (so above `threshold` means "more than that").
    `index`: True valid, False present but invalid (a `CONCURRENTLY` build that failed),
    None absent. `busy`: some of its documents are still being ingested.
    """

    chunks: int
    threshold: int
    index: bool | None
    busy: bool

    @property
    def action(self) -> IndexAction | None:
        """BUILD when the workspace is above the threshold without a valid index; DROP when
        it has an index and holds at most half the threshold (the gap keeps a workspace near
        the threshold from building and dropping in turn); else None. (`busy` is for the
        build job to wait on: a bulk load builds once, at its end.)"""
        if self.chunks > self.threshold and self.index is not True:
            return IndexAction.BUILD
        if self.index is not None and self.chunks <= self.threshold // 2:
            return IndexAction.DROP
        return None


async def state(
    conn: asyncpg.Connection, *, workspace_id: uuid.UUID, exact: ExactScan
) -> IndexState:
    """The workspace's `IndexState`, in one statement; `conn` is in the workspace's
    transaction (`Database.driver_transaction`), as the app role."""
    row = await conn.fetchrow(
        "WITH threshold AS (SELECT greatest($1::bigint, least("
        "floor($2::float8 * greatest(reltuples, 0))::bigint, $3::bigint)) AS rows"
        " FROM pg_class WHERE oid = 'chunk'::regclass)"
        " SELECT (SELECT rows FROM threshold),"
        " (SELECT count(*) FROM (SELECT 1 FROM chunk c WHERE c.workspace_id = $4"
        " LIMIT (SELECT rows + 1 FROM threshold)) AS in_scope),"
        " (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($5)),"
        " EXISTS (SELECT FROM document d WHERE d.workspace_id = $4"
        " AND d.status = ANY($6::text[]))",
        exact.max_rows,
        exact.max_share,
        exact.share_max_rows,
        workspace_id,
        index_name(workspace_id),
        list(_UNFINISHED),
    )
    assert row is not None
    return IndexState(chunks=int(row[1]), threshold=int(row[0]), index=row[2], busy=bool(row[3]))


async def build(
    conn: asyncpg.Connection, *, workspace_id: uuid.UUID, maintenance_work_mem: str
) -> None:
    """Builds the workspace's index `CONCURRENTLY` (writes go on meanwhile), replacing an
    invalid one a failed build left; a no-op when a valid one exists. `conn` is the owner's,
    outside any transaction; `maintenance_work_mem` (a PostgreSQL size, e.g. `'256MB'`) holds
    the graph while it is built."""
    name = index_name(workspace_id)
    valid = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", name
    )
    if valid is True:
        return
    if valid is False:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    await conn.execute("SELECT set_config('maintenance_work_mem', $1, false)", maintenance_work_mem)
    ws = uuid.UUID(str(workspace_id))
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON chunk"
        f" USING hnsw (embedding vector_cosine_ops) WHERE workspace_id = '{ws}'"
    )


async def drop(conn: asyncpg.Connection, *, workspace_id: uuid.UUID) -> None:
    """Drops the workspace's index `CONCURRENTLY`, if it has one (`conn` as for `build`)."""
    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index_name(workspace_id)}")


async def indexed_workspaces(conn: asyncpg.Connection) -> list[str]:
    """The names of every per-workspace vector index, valid or not (tests, benches)."""
    rows = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'chunk' AND indexname LIKE $1"
        " ORDER BY indexname",
        PREFIX + "%",
    )
    return [str(r[0]) for r in rows]
