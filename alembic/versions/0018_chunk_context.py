"""Contextual chunks: a chunk's context prefix, stored apart from its passage.

- `chunk.context`: the chunk's document title and heading path (`services/context.py`), ""
  for chunks written before (a reindex fills it). It is part of the keyword text, and with
  `CONTEXT_PREFIX=on` embedded with the passage.
- `chunk.tsv` is generated from `text` (weight A) and `context` (weight C) (it was `text`
  alone); the chunks already there have the context "", so their lexemes, and the BM25
  statistics counted from them (`bm25_delta`, migration 0014), stay as they were. The
  downgrade counts the statistics again. PostgreSQL 16 cannot change a generated column's
  expression (`SET EXPRESSION` is 17+), so the column is dropped and added again, with its
  GIN index and the `chunk_fts` view that reads it (0006's definition and grants, unchanged).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "rag_gql_app"
WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"


def _tsv(expression: str) -> None:
    """Replaces `chunk.tsv` by a column generated from `expression`, with its index and view."""
    op.execute("DROP VIEW chunk_fts")
    op.drop_index("ix_chunk_tsv", table_name="chunk")
    op.drop_column("chunk", "tsv")
    op.add_column(
        "chunk",
        sa.Column(
            "tsv",
            postgresql.TSVECTOR(),
            sa.Computed(expression, persisted=True),
            nullable=False,
        ),
    )
    op.create_index("ix_chunk_tsv", "chunk", ["tsv"], postgresql_using="gin")
    op.execute(
        "CREATE VIEW chunk_fts AS"
        " SELECT id, workspace_id, document_id, collection_id, page, tsv FROM chunk"
        f" WHERE workspace_id = {WORKSPACE}"
    )
    op.execute(f"REVOKE ALL ON chunk_fts FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT ON chunk_fts TO {APP_ROLE}")


def upgrade() -> None:
    op.add_column("chunk", sa.Column("context", sa.Text(), server_default="", nullable=False))
    _tsv(
        "setweight(to_tsvector('english', text), 'A')"
        " || setweight(to_tsvector('english', context), 'C')"
    )


# The BM25 statistics (migration 0014) and postings (0017) counted again from `tsv`, each
# workspace under its own scope (the policy is forced): after the downgrade a context's
# lexemes are gone from it.
RECOUNT = (
    "DO $$ DECLARE w uuid; BEGIN"
    " FOR w IN SELECT id FROM workspace LOOP"
    "  PERFORM set_config('app.workspace_id', w::text, true);"
    "  DELETE FROM bm25_delta WHERE workspace_id = w;"
    "  INSERT INTO bm25_delta (workspace_id, lexeme, chunks, length)"
    "  SELECT c.workspace_id, u.lexeme, count(*), 0 FROM chunk c, unnest(c.tsv) AS u"
    "   WHERE c.workspace_id = w GROUP BY c.workspace_id, u.lexeme"
    "  UNION ALL"
    "  SELECT c.workspace_id, '', count(*), coalesce(sum((SELECT sum(cardinality(u.positions))"
    "   FROM unnest(c.tsv) AS u)), 0) FROM chunk c WHERE c.workspace_id = w"
    "   GROUP BY c.workspace_id;"
    # The postings of migration 0017, read from the same `tsv`.
    "  DELETE FROM bm25_posting WHERE workspace_id = w;"
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
    _tsv("to_tsvector('english', text)")
    op.drop_column("chunk", "context")
    op.execute(RECOUNT)
