"""`document.ocr_pages`: how many pages of a document were read by OCR at its last indexing.

A plain counter on a table already under row-level security (its policies cover the new
column) and granted to the app role (column grants are not used), so nothing else changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "document", sa.Column("ocr_pages", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("document", "ocr_pages")
