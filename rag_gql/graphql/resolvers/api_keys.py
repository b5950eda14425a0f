"""API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info, parse_workspace_id
from rag_gql.graphql.resolvers.common import parse_id
from rag_gql.graphql.types.enums import Role
from rag_gql.services.rate_limits import Operation


@strawberry.type
class ApiKeyQuery:
    @strawberry.field(
        description="A workspace's API keys, newest first (ADMIN or OWNER); by default the "
        "request's workspace."
    )
    async def api_keys(
        self,
        info: Info,
        workspace_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="The workspace; null: the request's."),
        ] = None,
    ) -> list[types.ApiKey]:
        principal = await info.context.require_principal(parse_workspace_id(workspace_id))
        keys = await info.context.services.api_keys.list_keys(principal)
        return [types.ApiKey.from_model(key) for key in keys]


@strawberry.type
class ApiKeyMutation:
    @strawberry.mutation(
        description="Creates an API key for services (ADMIN or OWNER, a user, not a key); its "
        "role cannot exceed the caller's. The secret is returned only here."
    )
    async def create_api_key(
        self,
        info: Info,
        workspace_id: Annotated[
            strawberry.ID, strawberry.argument(description="The workspace the key acts in.")
        ],
        name: Annotated[
            str, strawberry.argument(description="What to call it: 1 to 200 characters.")
        ],
        role: Annotated[
            Role,
            strawberry.argument(description="The role it acts with; not above the caller's."),
        ],
        expires_at: Annotated[
            datetime | None,
            strawberry.argument(
                description="When it stops working: in the future, with a UTC offset; null: never."
            ),
        ] = None,
    ) -> types.CreateApiKeyPayload:
        principal = await info.context.require_principal(parse_workspace_id(workspace_id))
        await info.context.services.quotas.hit(Operation.CREATE_API_KEY, principal)
        created = await info.context.services.api_keys.create(
            principal, name=name, role=role, expires_at=expires_at
        )
        return types.CreateApiKeyPayload(
            api_key=types.ApiKey.from_model(created.api_key), secret=created.secret
        )

    @strawberry.mutation(
        description="Revokes one of the workspace's API keys at once (ADMIN or OWNER); the "
        "workspace is the request's (`X-Workspace-Id`, else the caller's personal one)."
    )
    async def revoke_api_key(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="The API key's id.")],
    ) -> types.ApiKey:
        principal = await info.context.require_principal()
        key = await info.context.services.api_keys.revoke(principal, parse_id(id, "API key"))
        return types.ApiKey.from_model(key)
