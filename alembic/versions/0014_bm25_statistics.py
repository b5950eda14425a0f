"""Okapi BM25 statistics per workspace: an append-only delta table kept by triggers on `chunk`.

- `bm25_delta(workspace_id, lexeme, chunks, length)`: signed changes of the workspace's
  statistics. For a lexeme, `chunks` is the change in how many chunks hold it (document
  frequency); the row with the empty lexeme `''` (never a lexeme of `to_tsvector`) carries
  the change in chunk count (`chunks`) and in total chunk length (`length`, lexeme
  occurrences, stop words excluded). A statistic is the sum of its rows.
- Statement-level triggers on `chunk` append the rows: AFTER INSERT (one `COPY` batch of
  ingestion, or one `INSERT`) adds +1 per chunk per lexeme, AFTER DELETE (re-indexing's
  `delete_chunks`, a document's or collection's deletion by cascade) adds -1. Rows of a
  workspace being deleted are not written (its statistics go with it, by cascade). So every
  path that writes or removes chunks keeps the statistics exact, in the same transaction as
  the chunks themselves, and concurrent ingestions in one workspace only ever INSERT: no
  shared row is updated, nothing waits, nothing deadlocks.
- `bm25.compact` (rag_gql/repositories/bm25.py) folds a lexeme's rows into one, in a short
  transaction of its own.

Row-level security as every tenant table (forced, the workspace's policy). `chunk` has no
UPDATE of `text` anywhere (its `tsv` is generated from it); re-indexing deletes and inserts.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "rag_gql_app"
WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"

# Both functions run as their caller (row-level security applies to what they write).
ADDED = """
CREATE FUNCTION rag_gql_bm25_added() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public AS $$
BEGIN
    INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)
    SELECT n.workspace_id, u.lexeme, count(*), 0
      FROM added n, unnest(n.tsv) AS u
     GROUP BY n.workspace_id, u.lexeme
    UNION ALL
    SELECT n.workspace_id, '', count(*),
           coalesce(sum((SELECT sum(cardinality(u.positions)) FROM unnest(n.tsv) AS u)), 0)
      FROM added n
     GROUP BY n.workspace_id;
    RETURN NULL;
END $$
"""

REMOVED = """
CREATE FUNCTION rag_gql_bm25_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public AS $$
BEGIN
    INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)
    SELECT o.workspace_id, u.lexeme, -count(*), 0
      FROM removed o, unnest(o.tsv) AS u
     WHERE EXISTS (SELECT FROM workspace w WHERE w.id = o.workspace_id)
     GROUP BY o.workspace_id, u.lexeme
    UNION ALL
    SELECT o.workspace_id, '', -count(*),
           -coalesce(sum((SELECT sum(cardinality(u.positions)) FROM unnest(o.tsv) AS u)), 0)
      FROM removed o
     WHERE EXISTS (SELECT FROM workspace w WHERE w.id = o.workspace_id)
     GROUP BY o.workspace_id;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute(
        "CREATE TABLE bm25_delta ("
        " id bigint GENERATED ALWAYS AS IDENTITY,"
        " workspace_id uuid NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,"
        " lexeme text NOT NULL,"
        " chunks bigint NOT NULL,"
        " length bigint NOT NULL DEFAULT 0,"
        # The workspace leads the key, as a PostgreSQL sharded by workspace needs.
        " CONSTRAINT pk_bm25_delta PRIMARY KEY (workspace_id, id))"
    )
    op.execute(
        "CREATE INDEX ix_bm25_delta_workspace_lexeme ON bm25_delta"
        " (workspace_id, lexeme) INCLUDE (chunks, length)"
    )
    op.execute("ALTER TABLE bm25_delta ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE bm25_delta FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON bm25_delta USING (workspace_id = {WORKSPACE})"
        f" WITH CHECK (workspace_id = {WORKSPACE})"
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON bm25_delta TO {APP_ROLE}")
    op.execute(f"REVOKE UPDATE ON bm25_delta FROM {APP_ROLE}")
    op.execute(ADDED)
    op.execute(REMOVED)
    op.execute(
        "CREATE TRIGGER bm25_added AFTER INSERT ON chunk REFERENCING NEW TABLE AS added"
        " FOR EACH STATEMENT EXECUTE FUNCTION rag_gql_bm25_added()"
    )
    op.execute(
        "CREATE TRIGGER bm25_removed AFTER DELETE ON chunk REFERENCING OLD TABLE AS removed"
        " FOR EACH STATEMENT EXECUTE FUNCTION rag_gql_bm25_removed()"
    )
    # The statistics of the chunks already there, each workspace under its own scope (the
    # policy is forced: it binds the owner running the migration too).
    op.execute(
        "DO $$ DECLARE w uuid; BEGIN"
        " FOR w IN SELECT DISTINCT workspace_id FROM chunk LOOP"
        "  PERFORM set_config('app.workspace_id', w::text, true);"
        "  INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)"
        "  SELECT c.workspace_id, u.lexeme, count(*), 0 FROM chunk c, unnest(c.tsv) AS u"
        "   WHERE c.workspace_id = w GROUP BY c.workspace_id, u.lexeme"
        "  UNION ALL"
        "  SELECT c.workspace_id, '', count(*), coalesce(sum((SELECT sum(cardinality(u.positions))"
        "   FROM unnest(c.tsv) AS u)), 0) FROM chunk c WHERE c.workspace_id = w"
        "   GROUP BY c.workspace_id;"
        " END LOOP;"
        " PERFORM set_config('app.workspace_id', '', true); END $$"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS bm25_removed ON chunk")
    op.execute("DROP TRIGGER IF EXISTS bm25_added ON chunk")
    op.execute("DROP FUNCTION IF EXISTS rag_gql_bm25_removed()")
    op.execute("DROP FUNCTION IF EXISTS rag_gql_bm25_added()")
    op.execute("DROP TABLE IF EXISTS bm25_delta")
