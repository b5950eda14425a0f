"""Document metadata: the file's own (`title`, `author`, `authored_at`) and the user's
(`metadata`, a flat JSON object, GIN-indexed for the search filters' `@>` and `?`).

Columns on `document`, a table already under forced row-level security (its policies cover
new columns) and granted to the app role as a whole (no column grants), so no policy or grant
changes. The GIN index leads with nothing but the JSON (`jsonb_ops` supports `@>` and `?`);
the workspace condition is ANDed by a bitmap over `ix_document_workspace_id_created_at`.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("document", sa.Column("title", sa.Text(), nullable=True))
    op.add_column("document", sa.Column("author", sa.Text(), nullable=True))
    op.add_column("document", sa.Column("authored_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "document",
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
    )
    op.create_index("ix_document_metadata", "document", ["metadata"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_document_metadata", table_name="document")
    op.drop_column("document", "metadata")
    op.drop_column("document", "authored_at")
    op.drop_column("document", "author")
    op.drop_column("document", "title")
