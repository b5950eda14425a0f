"""Accounts: register, verify, log in; `me`."""

from __future__ import annotations

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info


@strawberry.type
class AuthQuery:
    @strawberry.field(description="The caller (a user; an API key has no `me`).")
    async def me(self, info: Info) -> types.User:
        principal = await info.context.require_principal()
        user = await info.context.services.auth.current_user(principal)
        return types.User(id=strawberry.ID(str(user.id)), email=user.email)


@strawberry.type
class AuthMutation:
    @strawberry.mutation(description="Creates an account and emails it a 6-digit code.")
    async def register(self, info: Info, email: str, password: str) -> types.RegisterPayload:
        result = await info.context.services.auth.register(email, password)
        return types.RegisterPayload(email=result.email, code_expires_at=result.code_expires_at)

    @strawberry.mutation(description="Activates an account with the emailed code.")
    async def verify_email(self, info: Info, email: str, code: str) -> types.User:
        user = await info.context.services.auth.verify_email(email, code)
        return types.User(id=strawberry.ID(str(user.id)), email=user.email)

    @strawberry.mutation(description="Exchanges email and password for an access token.")
    async def login(self, info: Info, email: str, password: str) -> types.AuthPayload:
        token = await info.context.services.auth.login(email, password)
        return types.AuthPayload.from_token(token)
