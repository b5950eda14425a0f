"""A workspace's API keys."""

from __future__ import annotations

from datetime import datetime

import strawberry

from rag_gql.graphql.types.enums import Role
from rag_gql.services import records


@strawberry.type(description="A workspace's key for services; its secret was shown only once.")
class ApiKey:
    id: strawberry.ID = strawberry.field(description="Pass it to `revokeApiKey`.")
    name: str = strawberry.field(description="What its creator called it, to tell keys apart.")
    role: Role = strawberry.field(description="The role it acts with in its workspace.")
    prefix: str = strawberry.field(description="The secret's start (`rgk_` + 8 characters).")
    created_at: datetime = strawberry.field(description="When it was created.")
    expires_at: datetime | None = strawberry.field(
        description="When it stops working; null: never."
    )
    last_used_at: datetime | None = strawberry.field(description="Updated at most once a minute.")
    revoked_at: datetime | None = strawberry.field(
        description="When it was revoked (it no longer works); null while it is live."
    )

    @classmethod
    def from_model(cls, key: records.ApiKey) -> ApiKey:
        return cls(
            id=strawberry.ID(str(key.id)),
            name=key.name,
            role=Role(key.role),
            prefix=key.prefix,
            created_at=key.created_at,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


@strawberry.type(description="A new API key and its secret, shown this once and never again.")
class CreateApiKeyPayload:
    api_key: ApiKey = strawberry.field(description="The new key.")
    secret: str = strawberry.field(
        description="Send as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`."
    )
