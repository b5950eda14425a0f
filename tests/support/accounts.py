"""Creates verified accounts through the API, reading the code from the SMTP sink."""

from __future__ import annotations

from tests.support.graphql_client import GraphQLClient
from tests.support.smtp import Inbox

REGISTER = "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { email } }"
VERIFY = (
    "mutation($e: String!, $c: String!, $p: String!) "
    "{ verifyEmail(email: $e, code: $c, password: $p) { id email } }"
)
LOGIN = (
    "mutation($e: String!, $p: String!) "
    "{ login(email: $e, password: $p) { accessToken tokenType expiresIn } }"
)
PASSWORD = "correct horse battery staple"


async def sign_up(gql: GraphQLClient, inbox: Inbox, email: str, password: str = PASSWORD) -> str:
    """Registers, verifies with the emailed code, logs in; returns the access token."""
    before = len(inbox.to(email))
    await gql.data(REGISTER, {"e": email, "p": password})
    code = await inbox.wait_for_code(email, after=before)
    await gql.data(VERIFY, {"e": email, "c": code, "p": password})
    data = await gql.data(LOGIN, {"e": email, "p": password})
    token: str = data["login"]["accessToken"]
    return token
