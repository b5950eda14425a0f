"""Background ingestion: the procrastinate job queue, stored upload files, progress columns.

- procrastinate's schema (its `schema.sql`, for the version pinned in pyproject.toml). Upgrading
  procrastinate past a schema change needs a migration that applies its files from
  `procrastinate/sql/migrations/` (see procrastinate's "migrations" docs).
- `document_file_part`: the uploaded bytes, in parts of at most 1 MiB, so a worker on another
  machine can read them and nothing ever holds a whole file in memory. Row-level security like
  every tenant table.
- `document`: `unit` (what `chunk.page` counts: PAGE, SECTION or ROWS), progress
  (`pages_done`, `chunks_done`), the embedding model of the chunks, `updated_at`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence
from importlib import resources

import sqlalchemy as sa
from sqlalchemy.util import await_only

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"


def _execute_script(sql: str) -> None:
    """Runs a multi-statement script on the migration's own connection and transaction.

    SQLAlchemy would prepare it as one statement (and read `:name` as a bind parameter); the
    driver's simple-query protocol runs scripts as they are.
    """
    driver_connection = op.get_bind().connection.driver_connection
    await_only(driver_connection.execute(sql))  # type: ignore[union-attr]


def upgrade() -> None:
    schema = (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")
    _execute_script(schema)

    op.add_column(
        "document", sa.Column("unit", sa.String(16), server_default="PAGE", nullable=False)
    )
    op.add_column(
        "document", sa.Column("pages_done", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "document", sa.Column("chunks_done", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("document", sa.Column("embed_model", sa.String(255), nullable=True))
    op.add_column(
        "document",
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "document_file_part",
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("document_id", "seq", name="pk_document_file_part"),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["document.id"],
            name="fk_document_file_part_document_id_document",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspace.id"],
            name="fk_document_file_part_workspace_id_workspace",
            ondelete="CASCADE",
        ),
    )
    # Already compressed formats (PDF streams, ZIP-based EPUB/DOCX) gain nothing from pglz.
    op.execute("ALTER TABLE document_file_part ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE document_file_part ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE document_file_part FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON document_file_part "
        f"USING (workspace_id = {WORKSPACE}) WITH CHECK (workspace_id = {WORKSPACE})"
    )


def downgrade() -> None:
    op.drop_table("document_file_part")
    for column in ("updated_at", "embed_model", "chunks_done", "pages_done", "unit"):
        op.drop_column("document", column)
    op.execute(
        """
        DO $$ DECLARE r record; BEGIN
          FOR r IN SELECT tablename FROM pg_tables
                   WHERE schemaname = 'public' AND tablename LIKE 'procrastinate%' LOOP
            EXECUTE 'DROP TABLE IF EXISTS ' || quote_ident(r.tablename) || ' CASCADE';
          END LOOP;
          FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'public' AND p.proname LIKE 'procrastinate%' LOOP
            EXECUTE 'DROP FUNCTION IF EXISTS ' || r.fn || ' CASCADE';
          END LOOP;
          FOR r IN SELECT t.typname FROM pg_type t
                   JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'public' AND t.typname LIKE 'procrastinate%'
                     AND t.typtype IN ('e', 'c') LOOP
            EXECUTE 'DROP TYPE IF EXISTS ' || quote_ident(r.typname) || ' CASCADE';
          END LOOP;
        END $$
        """
    )
