"""Fenced ingestion runs and the sweep of unfinished documents.

- `document.ingest_lease`: the fencing token of ingestion runs, raised by one each time a run
  starts; a run writes the document (progress, chunks, READY) only while the token is still
  its own, so an older run that outlives its recovery cannot write over a newer one.
- `document.ingest_recoveries`: how many times in a row the worker put the document back in
  the queue after its run stopped without an outcome (reset when it ends READY or FAILED).
- `ix_document_unfinished`: the documents still to finish (QUEUED, PARSING, EMBEDDING, or
  marked for deletion), per workspace, by last change: what the sweep scans.
- `rag_gql_unfinished_documents(idle)`: the documents of every workspace unfinished, with no
  ingestion job waiting or running, unchanged for `idle`. Row-level security applies: it
  runs as its caller, scopes itself to one workspace at a time (`app.workspace_id`,
  transaction-local, as `Database.transaction` does) and restores the caller's scope.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED = "status IN ('QUEUED', 'PARSING', 'EMBEDDING') OR delete_requested_at IS NOT NULL"

FUNCTION = """
CREATE FUNCTION rag_gql_unfinished_documents(idle interval)
RETURNS TABLE(workspace_id uuid, document_id uuid)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public AS $$
DECLARE
    caller text := current_setting('app.workspace_id', true);
    w uuid;
BEGIN
    FOR w IN SELECT id FROM workspace ORDER BY id LOOP
        PERFORM set_config('app.workspace_id', w::text, true);
        RETURN QUERY
            SELECT d.workspace_id, d.id FROM document d
             WHERE d.workspace_id = w
               AND (d.status IN ('QUEUED', 'PARSING', 'EMBEDDING')
                    OR d.delete_requested_at IS NOT NULL)
               AND d.updated_at < now() - idle
               AND NOT EXISTS (
                   SELECT FROM procrastinate_jobs j
                    WHERE j.lock = 'document:' || d.id::text AND j.status IN ('todo', 'doing'));
    END LOOP;
    PERFORM set_config('app.workspace_id', coalesce(caller, ''), true);
END $$
"""


def upgrade() -> None:
    op.add_column(
        "document", sa.Column("ingest_lease", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "document",
        sa.Column("ingest_recoveries", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_index(
        "ix_document_unfinished",
        "document",
        ["workspace_id", "updated_at"],
        postgresql_where=sa.text(UNFINISHED),
    )
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS rag_gql_unfinished_documents(interval)")
    op.drop_index("ix_document_unfinished", table_name="document")
    op.drop_column("document", "ingest_recoveries")
    op.drop_column("document", "ingest_lease")
