"""References between tenant tables carry the workspace: composite foreign keys.

Every foreign key from one tenant table to another now names `workspace_id` on both sides:
`(collection_id, workspace_id)`, `(document_id, workspace_id)`, `(api_key_id, workspace_id)`
and `(conversation_id, workspace_id)` reference `(id, workspace_id)` of the parent, which gets
a unique constraint on those two columns (`id` alone is already unique, so the new one only
names it). Deletes cascade as before; a NULL `collection_id` or `api_key_id` is, as before,
no reference.

Why: a child row can no longer point at a parent in another workspace (the application never
wrote one; now the database refuses it), and the keys are the ones a distributed PostgreSQL
sharded by `workspace_id` (Citus) accepts between colocated tables, so this part of that move
is done (docs/operations.md, "Scaling out", lists what is not). The primary keys stay as they
are: changing them rewrites the largest tables and every `session.get` by id.

Cost: one scan of each child table to validate its new key (`chunk` the largest: no rewrite,
writes to it wait for the scan), and four small unique indexes on the parents.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARENTS = ("collection", "document", "api_key", "conversation")
"""Tables referenced by another tenant table: each gets `UNIQUE (id, workspace_id)`."""

REFERENCES = (
    # (child table, column, parent table); the key's name is the one it had.
    ("document", "collection_id", "collection"),
    ("document_file_part", "document_id", "document"),
    ("chunk", "document_id", "document"),
    ("conversation", "api_key_id", "api_key"),
    ("message", "conversation_id", "conversation"),
)


def _name(child: str, column: str, parent: str) -> str:
    return f"fk_{child}_{column}_{parent}"


def upgrade() -> None:
    for parent in PARENTS:
        op.create_unique_constraint(f"uq_{parent}_id_workspace_id", parent, ["id", "workspace_id"])
    for child, column, parent in REFERENCES:
        name = _name(child, column, parent)
        op.drop_constraint(name, child, type_="foreignkey")
        op.create_foreign_key(
            name,
            child,
            parent,
            [column, "workspace_id"],
            ["id", "workspace_id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    for child, column, parent in REFERENCES:
        name = _name(child, column, parent)
        op.drop_constraint(name, child, type_="foreignkey")
        op.create_foreign_key(name, child, parent, [column], ["id"], ondelete="CASCADE")
    for parent in PARENTS:
        op.drop_constraint(f"uq_{parent}_id_workspace_id", parent, type_="unique")
