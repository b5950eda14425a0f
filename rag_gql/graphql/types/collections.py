"""Collections of a workspace."""

from __future__ import annotations

from datetime import datetime

import strawberry

from rag_gql.services import collections


@strawberry.type(description="A named group of documents in a workspace.")
class Collection:
    id: strawberry.ID = strawberry.field(
        description="Pass it as `collectionId` to upload into it, or in `collectionIds` to "
        "search it."
    )
    name: str = strawberry.field(description="Its name, 1 to 200 characters.")
    document_count: int = strawberry.field(description="Documents in it now.")
    created_at: datetime = strawberry.field(description="When it was created.")

    @classmethod
    def from_view(cls, view: collections.CollectionView) -> Collection:
        c = view.collection
        return cls(
            id=strawberry.ID(str(c.id)),
            name=c.name,
            document_count=view.document_count,
            created_at=c.created_at,
        )
