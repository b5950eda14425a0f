"""Row-level security on the auth tables; documents marked for deletion.

`membership`, `api_key`, `invitation` and `refresh_token` get row-level security, enabled and
forced like the tenant tables, with policies on three transaction-local settings:

- `app.workspace_id` (as in 0002): the current workspace's memberships, keys and invitations,
  readable and writable; a row written must belong to it (WITH CHECK).
- `app.user_id`: the user's own memberships in every workspace (read only) and the user's own
  refresh tokens (read and write).
- `app.lookup_hash`: the one key, invitation or refresh token whose secret hashes to it, read
  (and locked, for invitations and refresh tokens) before the workspace or user is known. A
  lookup by one secret sees that row only; changing the row needs the workspace or user scope.

`document.delete_requested_at`: a document deleted while its ingestion holds its row is marked
(hidden at once) and removed by the worker at its next batch.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"
USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
LOOKUP = "NULLIF(current_setting('app.lookup_hash', true), '')"

POLICIES: dict[str, tuple[tuple[str, str, str, str | None], ...]] = {
    # table: (name, command, USING, WITH CHECK)
    "membership": (
        ("tenant_isolation", "ALL", f"workspace_id = {WORKSPACE}", f"workspace_id = {WORKSPACE}"),
        ("own_memberships", "SELECT", f"user_id = {USER}", None),
    ),
    "api_key": (
        ("tenant_isolation", "ALL", f"workspace_id = {WORKSPACE}", f"workspace_id = {WORKSPACE}"),
        ("by_secret", "SELECT", f"key_hash = {LOOKUP}", None),
    ),
    "invitation": (
        ("tenant_isolation", "ALL", f"workspace_id = {WORKSPACE}", f"workspace_id = {WORKSPACE}"),
        ("by_secret", "SELECT", f"token_hash = {LOOKUP}", None),
        # SELECT ... FOR UPDATE needs an UPDATE policy; the row written stays in the workspace.
        ("by_secret_lock", "UPDATE", f"token_hash = {LOOKUP}", f"workspace_id = {WORKSPACE}"),
    ),
    "refresh_token": (
        ("own_tokens", "ALL", f"user_id = {USER}", f"user_id = {USER}"),
        ("by_secret", "SELECT", f"token_hash = {LOOKUP}", None),
        ("by_secret_lock", "UPDATE", f"token_hash = {LOOKUP}", f"user_id = {USER}"),
    ),
}


def upgrade() -> None:
    for table, policies in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        for name, command, using, check in policies:
            with_check = f" WITH CHECK ({check})" if check else ""
            op.execute(f"CREATE POLICY {name} ON {table} FOR {command} USING ({using}){with_check}")
    op.add_column(
        "document", sa.Column("delete_requested_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("document", "delete_requested_at")
    for table, policies in POLICIES.items():
        for name, _command, _using, _check in policies:
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
