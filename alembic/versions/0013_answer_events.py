"""Durable answers: the stored events of every answer, replayed by `answerStream`.

- `answer_event`: an answer's events in batches, `seq` to `last_seq` within the answer (1: its
  sources; then one per token; the last: its end), written while the answer streams and
  deleted with its message, and kept in its message's workspace by a foreign key on
  (workspace_id, message_id) (`uq_message_workspace_id_id` is its target). Row-level
  security, enabled and forced like the other tenant tables: the current workspace's rows
  only, read and written (WITH CHECK).
- `message.status` gains the value `streaming` (no constraint to change: a string column):
  the answer's run is writing it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"
APP_ROLE = "rag_gql_app"


def upgrade() -> None:
    op.create_unique_constraint("uq_message_workspace_id_id", "message", ["workspace_id", "id"])
    op.create_table(
        "answer_event",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        # The workspace leads the key, as a PostgreSQL sharded by workspace needs.
        sa.PrimaryKeyConstraint("workspace_id", "message_id", "seq", name="pk_answer_event"),
        # With the workspace: an event stays in its message's workspace (a foreign key is
        # checked without row-level security).
        sa.ForeignKeyConstraint(
            ["workspace_id", "message_id"],
            ["message.workspace_id", "message.id"],
            name="fk_answer_event_workspace_id_message",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspace.id"],
            name="fk_answer_event_workspace_id_workspace",
            ondelete="CASCADE",
        ),
    )
    # The default privileges of 0002 cover new tables; granted here too, for databases whose
    # tables were made by another role than the one migrating now.
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON answer_event TO {APP_ROLE}")
    op.execute("ALTER TABLE answer_event ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE answer_event FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON answer_event "
        f"USING (workspace_id = {WORKSPACE}) WITH CHECK (workspace_id = {WORKSPACE})"
    )


def downgrade() -> None:
    op.execute("DROP POLICY IF EXISTS tenant_isolation ON answer_event")
    op.drop_table("answer_event")
    op.drop_constraint("uq_message_workspace_id_id", "message", type_="unique")
