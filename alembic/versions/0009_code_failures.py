"""Failed one-time code attempts, counted per account over 24 hours; no password before
verification.

`code_failure` holds one row per failed `verifyEmail` or `resetPassword` attempt, keyed by an
HMAC of the email (`account_hash`) so unknown addresses are counted like known ones. Row-level
security, enabled and forced, on `app.lookup_hash` (as in 0008):

- a transaction sees and adds the rows of the one account whose hash it set;
- rows older than the 24-hour window tell nothing any more: anyone may see and delete them,
  so each attempt can prune them.

There is no UPDATE policy: a failure, once written, stays as it is.

Pending registrations lose the password chosen at `register`: from now on `verifyEmail` sets
it, so the one who reads the mailbox chooses it (a pre-hijacker's password is never used).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "rag_gql_app"
LOOKUP = "NULLIF(current_setting('app.lookup_hash', true), '')"
EXPIRED = "failed_at < now() - interval '24 hours'"

POLICIES: tuple[tuple[str, str, str | None, str | None], ...] = (
    # (name, command, USING, WITH CHECK)
    ("by_account", "SELECT", f"account_hash = {LOOKUP} OR {EXPIRED}", None),
    ("by_account_add", "INSERT", None, f"account_hash = {LOOKUP}"),
    ("expired", "DELETE", EXPIRED, None),
)


def upgrade() -> None:
    op.create_table(
        "code_failure",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_hash", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_code_failure"),
    )
    op.create_index(
        "ix_code_failure_account_hash_purpose",
        "code_failure",
        ["account_hash", "purpose", "failed_at"],
    )
    op.create_index("ix_code_failure_failed_at", "code_failure", ["failed_at"])
    op.execute("ALTER TABLE code_failure ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE code_failure FORCE ROW LEVEL SECURITY")
    for name, command, using, check in POLICIES:
        clauses = (f" USING ({using})" if using else "") + (
            f" WITH CHECK ({check})" if check else ""
        )
        op.execute(f"CREATE POLICY {name} ON code_failure FOR {command}{clauses}")
    op.execute(f"REVOKE ALL ON code_failure FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON code_failure TO {APP_ROLE}")

    op.execute("UPDATE \"user\" SET password_hash = '!' WHERE verified_at IS NULL")


def downgrade() -> None:
    # The passwords of pending registrations are not restored: they register again.
    op.drop_index("ix_code_failure_failed_at", table_name="code_failure")
    op.drop_index("ix_code_failure_account_hash_purpose", table_name="code_failure")
    op.drop_table("code_failure")
