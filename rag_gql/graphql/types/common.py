"""What the areas' types share: the Relay page info and the cursor's description."""

from __future__ import annotations

import strawberry

CURSOR = "Opaque; pass it as `after` for the items that follow this one."


@strawberry.type(
    description="Where a page of a connection is in the whole list (Relay Cursor Connections)."
)
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="True when items follow this page; fetch them with `after: endCursor`."
    )
    has_previous_page: bool = strawberry.field(
        description="True when `after` was given and items come before the cursor's own item "
        "in the list's order now (the Relay spec's elements prior to `after`); always false "
        "without `after`."
    )
    start_cursor: str | None = strawberry.field(
        description="The cursor of the page's first edge; null when the page is empty."
    )
    end_cursor: str | None = strawberry.field(
        description="The cursor of the page's last edge; null when the page is empty."
    )

    @classmethod
    def of(cls, cursors: list[str], *, has_next_page: bool, has_previous_page: bool) -> PageInfo:
        """The page info of a page whose edges have `cursors`, in order."""
        return cls(
            has_next_page=has_next_page,
            has_previous_page=has_previous_page,
            start_cursor=cursors[0] if cursors else None,
            end_cursor=cursors[-1] if cursors else None,
        )
