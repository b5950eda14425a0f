"""Vector indexes per workspace, only where a search uses one: the global HNSW index dropped.

A scope of up to the exact-scan threshold (`EXACT_SEARCH_MAX_ROWS`, or the share rule) is
searched by an exact scan, which no index serves, and most workspaces stay below it: upkeep
of one HNSW index over every chunk was most of ingestion's database time. From here a
workspace above the threshold gets a partial HNSW index of its own,
`ix_chunk_embedding_ws_<workspace id in hex>` (`... WHERE workspace_id = '<id>'`), built
`CONCURRENTLY` by a background job (`rag_gql/ingestion/vector_indexes.py`) once its
ingestion settles, and dropped when it shrinks to half the threshold. Until it exists, the
workspace's search is an exact scan (correct, slower). The search's custom plans
(`plan_cache_mode = force_custom_plan`) carry the workspace as a constant, which is how the
planner proves a partial index's predicate; row-level security is unchanged (the index is
read under the same policy).

No new table, no new grant: which workspace has an index is PostgreSQL's own catalog. Run
by the table's owner (the migrating user), as the jobs' index builds are.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "ix_chunk_embedding_ws_"


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_chunk_embedding_hnsw")


def downgrade() -> None:
    op.execute(
        f"""
        DO $$
        DECLARE name text;
        BEGIN
            FOR name IN SELECT indexname FROM pg_indexes
                         WHERE tablename = 'chunk' AND indexname LIKE '{PREFIX}%'
            LOOP
                EXECUTE format('DROP INDEX %I', name);
            END LOOP;
        END $$
        """
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_chunk_embedding_hnsw ON chunk"
        " USING hnsw (embedding vector_cosine_ops)"
    )
