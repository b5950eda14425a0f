"""Accounts and sessions: `User`, `RegisterPayload`, `AuthPayload`."""

from __future__ import annotations

from datetime import datetime

import strawberry

from rag_gql.services import auth


@strawberry.type(description="An account.")
class User:
    id: strawberry.ID = strawberry.field(description="The user's id.")
    email: str = strawberry.field(description="The account's email address, lower-cased.")


@strawberry.type(description="A registration waiting for the emailed 6-digit code.")
class RegisterPayload:
    email: str = strawberry.field(
        description="Where the code (or, for an existing account, a notice) was sent, as "
        "stored (lower-cased)."
    )
    code_expires_at: datetime = strawberry.field(
        description="When the code stops working; `register` again for a new one."
    )


@strawberry.type(
    description="A session: a short-lived access token (JWT; send it as `Authorization: "
    "Bearer`) and a refresh token that renews it once with `refreshToken`."
)
class AuthPayload:
    access_token: str = strawberry.field(
        description="A signed JWT; send it as `Authorization: Bearer <accessToken>`."
    )
    token_type: str = strawberry.field(description="Always `Bearer` (RFC 6750).")
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    refresh_token: str = strawberry.field(
        description="Opaque; good for one `refreshToken` call, which returns the next one."
    )
    refresh_expires_in: int = strawberry.field(
        description="Seconds until the refresh token expires."
    )

    @classmethod
    def from_tokens(cls, tokens: auth.Tokens) -> AuthPayload:
        return cls(
            access_token=tokens.access.access_token,
            token_type=tokens.access.token_type,
            expires_in=tokens.access.expires_in,
            refresh_token=tokens.refresh_token,
            refresh_expires_in=tokens.refresh_expires_in,
        )
