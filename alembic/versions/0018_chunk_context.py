"""Contextual chunks: a chunk's context prefix, stored apart from its passage.

- `chunk.context`: the chunk's document title and heading path (`services/context.py`), ""
  for chunks written before (a reindex fills it). It is embedded with the passage, and it is
  part of the keyword text.
- `chunk.tsv` is generated from `context || ' ' || text` (it was `text` alone). PostgreSQL 16
  cannot change a generated column's expression (`SET EXPRESSION` is 17+), so the column is
  dropped and added again, with its GIN index and the `chunk_fts` view that reads it (0006's
  definition and grants, unchanged).

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


def downgrade() -> None:
    _tsv("to_tsvector('english', text)")
    op.drop_column("chunk", "context")
