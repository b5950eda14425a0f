"""Small helpers shared by resolvers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import strawberry

from rag_gql.errors import NotFound
from rag_gql.services.documents import MAX_PAGE_SIZE

DEFAULT_PAGE_SIZE = 20

First = Annotated[
    int | None,
    strawberry.argument(
        description=f"How many items to return: 1 to {MAX_PAGE_SIZE} (null: {DEFAULT_PAGE_SIZE})."
    ),
]
After = Annotated[
    str | None,
    strawberry.argument(
        description="Return the items after this cursor (an edge's `cursor` or "
        "`pageInfo.endCursor`); null: from the start."
    ),
]
Email = Annotated[str, strawberry.argument(description="An email address (case-insensitive).")]


def parse_id(value: strawberry.ID, what: str) -> uuid.UUID:
    """Parses an opaque id; a malformed one is simply "<what> not found"."""
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise NotFound(f"{what} not found") from exc


def selects(selections: Sequence[Any], *path: str) -> bool:
    """Whether the field at `path` (`"snippet"`; `"edges", "node", "messages"`) is selected
    under the resolver's field, fragments included; pass `info.selected_fields`. Work for a
    field nobody asked for can be skipped."""
    for selection in selections:
        for child in getattr(selection, "selections", None) or []:
            if not hasattr(child, "arguments"):
                # A fragment spread or inline fragment: its selections are at this level.
                found = selects([child], *path)
            else:
                found = getattr(child, "name", None) == path[0] and (
                    len(path) == 1 or selects([child], *path[1:])
                )
            if found:
                return True
    return False
