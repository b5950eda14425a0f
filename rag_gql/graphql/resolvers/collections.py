"""Collections of the request's workspace: list, create, delete."""

from __future__ import annotations

from typing import Annotated

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import parse_id
from rag_gql.graphql.resolvers.workspaces import Name


@strawberry.type
class CollectionQuery:
    @strawberry.field(description="The collections of the request's workspace, by name.")
    async def collections(self, info: Info) -> list[types.Collection]:
        principal = await info.context.require_principal()
        views = await info.context.services.collections.list_all(principal)
        return [types.Collection.from_view(v) for v in views]


@strawberry.type
class CollectionMutation:
    @strawberry.mutation(description="Creates a collection in the request's workspace.")
    async def create_collection(self, info: Info, name: Name) -> types.Collection:
        principal = await info.context.require_principal()
        view = await info.context.services.collections.create(principal, name)
        return types.Collection.from_view(view)

    @strawberry.mutation(description="Deletes a collection with its documents and chunks.")
    async def delete_collection(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="The collection's id.")],
    ) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.collections.delete(principal, parse_id(id, "Collection"))
        return True
