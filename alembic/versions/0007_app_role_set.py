"""The migrating user may `SET ROLE rag_gql_app` on PostgreSQL 16 and later.

Migration 0002 granted `rag_gql_app` to the migrating user unless it was already a member. On
PostgreSQL 16+, a user with CREATEROLE (not a superuser) that creates a role becomes its member
*with ADMIN but without SET* (`createrole_self_grant` is empty by default), so 0002 saw a
member, granted nothing, and every pooled connection's `SET ROLE rag_gql_app` then failed:
the server could not start against a `DATABASE_URL` whose user was set up as README says. This
checks the SET privilege itself (PostgreSQL 16+; before 16 membership is enough) and grants the
role once more when it is missing: a new grant by the user itself, with SET.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "rag_gql_app"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT pg_has_role(current_user, '{APP_ROLE}',
              CASE WHEN current_setting('server_version_num')::int >= 160000
                   THEN 'SET' ELSE 'MEMBER' END) THEN
            EXECUTE 'GRANT {APP_ROLE} TO ' || quote_ident(current_user);
          END IF;
        END $$
        """
    )


def downgrade() -> None:
    """Nothing: a membership that lets the user act as the app role is what 0002 meant."""
