"""Accounts: register, verify, log in, refresh, log out, change or reset the password; `me`."""

from __future__ import annotations

from typing import Annotated

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import Email

NewPassword = Annotated[
    str,
    strawberry.argument(
        description="8 to 1024 characters, not easy to guess (the error says why one is)."
    ),
]
Code = Annotated[str, strawberry.argument(description="The 6-digit code from the email.")]
RegisterPassword = Annotated[
    str,
    strawberry.argument(
        description="Checked against the password policy (8 to 1024 characters, not easy to "
        "guess) and not stored: the password is set by `verifyEmail`, which takes it again."
    ),
]
AccountPassword = Annotated[
    str,
    strawberry.argument(
        description="The account's password from now on, chosen by whoever has the code: "
        "8 to 1024 characters, not easy to guess (the error says why one is)."
    ),
]


def client_ip(info: Info) -> str | None:
    """The peer's IP address, as the ASGI server reports it (None when unknown).

    Behind a reverse proxy, run uvicorn with `--proxy-headers` and `--forwarded-allow-ips`
    so this is the client's address, not the proxy's.
    """
    client = info.context.request.client
    return client.host if client is not None else None


@strawberry.type
class AuthQuery:
    @strawberry.field(description="The caller (a user; an API key has no `me`).")
    async def me(self, info: Info) -> types.User:
        principal = await info.context.require_principal()
        user = await info.context.services.auth.current_user(principal)
        return types.User(id=strawberry.ID(str(user.id)), email=user.email)


@strawberry.type
class AuthMutation:
    @strawberry.mutation(
        description="Starts a registration and emails a 6-digit code for `verifyEmail`; an "
        "address that already has an account gets a notice instead, and the same answer."
    )
    async def register(
        self, info: Info, email: Email, password: RegisterPassword
    ) -> types.RegisterPayload:
        result = await info.context.services.auth.register(
            email, password, client_ip=client_ip(info)
        )
        return types.RegisterPayload(email=result.email, code_expires_at=result.code_expires_at)

    @strawberry.mutation(
        description="Activates an account with the emailed code and sets its password."
    )
    async def verify_email(
        self, info: Info, email: Email, code: Code, password: AccountPassword
    ) -> types.User:
        user = await info.context.services.auth.verify_email(
            email, code, password, client_ip=client_ip(info)
        )
        return types.User(id=strawberry.ID(str(user.id)), email=user.email)

    @strawberry.mutation(description="Exchanges email and password for a session's tokens.")
    async def login(
        self,
        info: Info,
        email: Email,
        password: Annotated[str, strawberry.argument(description="The account's password.")],
    ) -> types.AuthPayload:
        tokens = await info.context.services.auth.login(email, password, client_ip=client_ip(info))
        return types.AuthPayload.from_tokens(tokens)

    @strawberry.mutation(
        description="Exchanges a refresh token for new tokens; each refresh token works once, "
        "and using one twice ends its session."
    )
    async def refresh_token(
        self,
        info: Info,
        token: Annotated[
            str, strawberry.argument(description="The latest `refreshToken` of the session.")
        ],
    ) -> types.AuthPayload:
        tokens = await info.context.services.auth.refresh(token)
        return types.AuthPayload.from_tokens(tokens)

    @strawberry.mutation(
        description="Ends the session of this refresh token; true even for an unknown token."
    )
    async def logout(
        self,
        info: Info,
        refresh_token: Annotated[
            str, strawberry.argument(description="The session's latest `refreshToken`.")
        ],
    ) -> bool:
        await info.context.services.auth.logout(refresh_token)
        return True

    @strawberry.mutation(
        description="Changes the caller's password and ends all their sessions, this one too."
    )
    async def change_password(
        self,
        info: Info,
        current_password: Annotated[
            str, strawberry.argument(description="The caller's password now.")
        ],
        new_password: NewPassword,
    ) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.auth.change_password(
            principal, current_password, new_password, client_ip=client_ip(info)
        )
        return True

    @strawberry.mutation(
        description="Emails a 6-digit reset code if a verified account has this email; always true."
    )
    async def request_password_reset(self, info: Info, email: Email) -> bool:
        await info.context.services.auth.request_password_reset(email, client_ip=client_ip(info))
        return True

    @strawberry.mutation(
        description="Sets a new password with the emailed reset code; ends all sessions."
    )
    async def reset_password(
        self, info: Info, email: Email, code: Code, new_password: NewPassword
    ) -> bool:
        await info.context.services.auth.reset_password(
            email, code, new_password, client_ip=client_ip(info)
        )
        return True
