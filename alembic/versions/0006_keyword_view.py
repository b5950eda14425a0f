"""Keyword search through a view, so PostgreSQL can use the GIN index under row-level security.

Why: `tsv @@ query` (`ts_match_vq`) is not LEAKPROOF, so on a table with a row-level
security policy PostgreSQL must apply the policy to a row before it evaluates `@@` on it, and
cannot make `@@` an index condition: every keyword search read all of the workspace's chunks
and filtered them (a parallel sequential scan for a large workspace; measured at 100,000
chunks, 30,000 in one workspace: 255 ms p50 under the policy, 40 ms through this view).

`chunk_fts` holds the current workspace's chunks (`app.workspace_id`, the same setting and
expression as the policies) with the columns keyword search reads. It is an ordinary view
(not `security_barrier`): the planner merges it into the query and may use `ix_chunk_tsv` and
the workspace index together. Its owner reads `chunk` without the policy, which is why `chunk`
no longer *forces* row-level security: a forced policy binds the owner as well, and the view
would be as slow as the table. The policy still binds `rag_gql_app`, the only role the
application's queries run as (it owns nothing and has no BYPASSRLS); only the owner's own
sessions (migrations, an operator's psql) see every workspace.

Why an ordinary view is as safe here as the policy: rows of another workspace can reach only
functions the query calls before the view's condition, so a leak needs SQL that calls a leaky
function of its own — and whoever can send SQL as `rag_gql_app` can `set_config` any
workspace anyway, policy or view. The view's condition keeps the application's own queries
scoped exactly as the policy does (tests/test_row_level_security.py tries to break it).
`rag_gql_app` may only SELECT from it (the schema's default privileges would also have granted
INSERT, UPDATE and DELETE, which through the owner would skip the policy's WITH CHECK).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "rag_gql_app"
WORKSPACE = "NULLIF(current_setting('app.workspace_id', true), '')::uuid"


def upgrade() -> None:
    op.execute("ALTER TABLE chunk NO FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE VIEW chunk_fts AS"
        " SELECT id, workspace_id, document_id, collection_id, page, tsv FROM chunk"
        f" WHERE workspace_id = {WORKSPACE}"
    )
    op.execute(f"REVOKE ALL ON chunk_fts FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT ON chunk_fts TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP VIEW chunk_fts")
    op.execute("ALTER TABLE chunk FORCE ROW LEVEL SECURITY")
