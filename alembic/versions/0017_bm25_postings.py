"""Impact-ordered BM25 postings per workspace, kept by the same triggers as `bm25_delta`.

- `bm25_posting(workspace_id, lexeme, impact, chunk_id, tf, length)`: one row per chunk and
  lexeme it holds: the lexeme's occurrences in the chunk (`tf`), the chunk's length
  (`length`, lexeme occurrences, stop words excluded, as `bm25_delta` counts it) and
  `impact`, a fixed function of the two (`rag_gql_bm25_impact`: the BM25 term-frequency
  factor with k1 1.2, b 0.75 and an average length of 100). Its primary key
  `(workspace_id, lexeme, impact, chunk_id)` reads a lexeme's chunks best first (Anh &
  Moffat's impact-ordered postings); `bm25.ranked` stops reading once no unread chunk can
  enter the top k (the threshold algorithm, Fagin et al. 2003). Scores still use the
  workspace's statistics at query time: the impact only orders, and bounds, what is unread.
- The statement-level triggers of migration 0014 (AFTER INSERT / AFTER DELETE on `chunk`)
  now also add and remove postings, in the same statement as the delta rows and reading
  each chunk's lexemes once. A posting is removed by its whole key (the impact is computed
  again from the removed chunk's `tsv`), so no second index is written. Postings of a
  deleted workspace are removed by its key prefix. No foreign key (a check per posting
  would cost more than the posting): the triggers are the only writers.

Row-level security as every tenant table (forced, the workspace's policy); the app role may
read, insert and delete, never update.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "rag_gql_app"
WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"

# The BM25 term-frequency factor at k1 1.2, b 0.75, average length 100 (bm25.IMPACT_*).
IMPACT = """
CREATE FUNCTION rag_gql_bm25_impact(tf integer, length integer) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (tf * 2.2::float8
            / (tf + 1.2::float8 * (0.25::float8 + 0.75::float8 * length / 100.0::float8)))::real
$$
"""

# Both functions run as their caller (row-level security applies to what they write); one
# pass over the lexemes of the statement's chunks.
ADDED = """
CREATE OR REPLACE FUNCTION rag_gql_bm25_added() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public AS $$
BEGIN
    WITH t AS MATERIALIZED (
        SELECT c.workspace_id, c.id, u.lexeme, cardinality(u.positions) AS tf
          FROM added c, unnest(c.tsv) AS u
    ), l AS MATERIALIZED (
        SELECT id, sum(tf)::integer AS length FROM t GROUP BY id
    ), p AS (
        INSERT INTO bm25_posting (workspace_id, lexeme, impact, chunk_id, tf, length)
        SELECT t.workspace_id, t.lexeme, rag_gql_bm25_impact(t.tf, l.length), t.id, t.tf,
               l.length
          FROM t JOIN l ON l.id = t.id
    )
    INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)
    SELECT workspace_id, lexeme, count(*), 0 FROM t GROUP BY workspace_id, lexeme
    UNION ALL
    SELECT c.workspace_id, '', count(*), coalesce(sum(l.length), 0)
      FROM added c LEFT JOIN l ON l.id = c.id
     GROUP BY c.workspace_id;
    RETURN NULL;
END $$
"""

REMOVED = """
CREATE OR REPLACE FUNCTION rag_gql_bm25_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public AS $$
BEGIN
    WITH live AS MATERIALIZED (
        SELECT DISTINCT o.workspace_id FROM removed o
         WHERE EXISTS (SELECT FROM workspace w WHERE w.id = o.workspace_id)
    ), t AS MATERIALIZED (
        SELECT c.workspace_id, c.id, u.lexeme, cardinality(u.positions) AS tf
          FROM removed c, unnest(c.tsv) AS u
         WHERE c.workspace_id IN (SELECT workspace_id FROM live)
    ), l AS MATERIALIZED (
        SELECT id, sum(tf)::integer AS length FROM t GROUP BY id
    ), p AS (
        DELETE FROM bm25_posting b USING t JOIN l ON l.id = t.id
         WHERE b.workspace_id = t.workspace_id AND b.lexeme = t.lexeme
           AND b.impact = rag_gql_bm25_impact(t.tf, l.length) AND b.chunk_id = t.id
    ), gone AS (
        DELETE FROM bm25_posting b
         WHERE b.workspace_id IN (SELECT DISTINCT workspace_id FROM removed)
           AND b.workspace_id NOT IN (SELECT workspace_id FROM live)
    )
    INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)
    SELECT workspace_id, lexeme, -count(*), 0 FROM t GROUP BY workspace_id, lexeme
    UNION ALL
    SELECT c.workspace_id, '', -count(*), -coalesce(sum(l.length), 0)
      FROM removed c LEFT JOIN l ON l.id = c.id
     WHERE c.workspace_id IN (SELECT workspace_id FROM live)
     GROUP BY c.workspace_id;
    RETURN NULL;
END $$
"""

# Migration 0014's functions, restored by the downgrade.
ADDED_0014 = """
CREATE OR REPLACE FUNCTION rag_gql_bm25_added() RETURNS trigger
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

REMOVED_0014 = """
CREATE OR REPLACE FUNCTION rag_gql_bm25_removed() RETURNS trigger
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
        "CREATE TABLE bm25_posting ("
        " workspace_id uuid NOT NULL,"
        " lexeme text NOT NULL,"
        " impact real NOT NULL,"
        " chunk_id bigint NOT NULL,"
        " tf smallint NOT NULL,"
        " length integer NOT NULL,"
        # The workspace leads the key, as a PostgreSQL sharded by workspace needs; read
        # backwards, the key lists a lexeme's chunks by impact, best first.
        " CONSTRAINT pk_bm25_posting PRIMARY KEY (workspace_id, lexeme, impact, chunk_id)"
        " INCLUDE (tf, length))"
    )
    op.execute("ALTER TABLE bm25_posting ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE bm25_posting FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON bm25_posting USING (workspace_id = {WORKSPACE})"
        f" WITH CHECK (workspace_id = {WORKSPACE})"
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON bm25_posting TO {APP_ROLE}")
    op.execute(f"REVOKE UPDATE ON bm25_posting FROM {APP_ROLE}")
    op.execute(IMPACT)
    op.execute(ADDED)
    op.execute(REMOVED)
    # The postings of the chunks already there, each workspace under its own scope (the
    # policy is forced: it binds the owner running the migration too).
    op.execute(
        "DO $$ DECLARE w uuid; BEGIN"
        " FOR w IN SELECT DISTINCT workspace_id FROM chunk LOOP"
        "  PERFORM set_config('app.workspace_id', w::text, true);"
        "  INSERT INTO bm25_posting (workspace_id, lexeme, impact, chunk_id, tf, length)"
        "  SELECT c.workspace_id, u.lexeme,"
        "   rag_gql_bm25_impact(cardinality(u.positions), l.length),"
        "   c.id, cardinality(u.positions), l.length"
        "   FROM chunk c CROSS JOIN LATERAL (SELECT coalesce(sum(cardinality(v.positions)), 0)"
        "   ::integer AS length FROM unnest(c.tsv) AS v) l, unnest(c.tsv) AS u"
        "   WHERE c.workspace_id = w;"
        " END LOOP;"
        " PERFORM set_config('app.workspace_id', '', true); END $$"
    )


def downgrade() -> None:
    op.execute(ADDED_0014)
    op.execute(REMOVED_0014)
    op.execute("DROP TABLE IF EXISTS bm25_posting")
    op.execute("DROP FUNCTION IF EXISTS rag_gql_bm25_impact(integer, integer)")
