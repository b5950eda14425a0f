"""Rate limits on the account endpoints, per client IP and per account, through the real API.

Each test serves the app with low limits (a copy of the test's settings); every request comes
from 127.0.0.1, so the per-IP limits are high where a test is about the per-account ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from rag_gql.config import Settings
from rag_gql.errors import RateLimited
from rag_gql.services.rate_limits import RateLimiter
from tests.support.accounts import LOGIN, PASSWORD, REGISTER, VERIFY, sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.serving import serve
from tests.support.smtp import Inbox
from tests.support.uploads import assert_error

CHANGE = (
    "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"
)
REQUEST_RESET = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = (
    "mutation($e: String!, $c: String!, $n: String!) "
    "{ resetPassword(email: $e, code: $c, newPassword: $n) }"
)
NEW_PASSWORD = "purple velvet antelope"


@asynccontextmanager
async def limited(
    gql: GraphQLClient, settings: Settings, *, per_ip: str, per_account: str
) -> AsyncIterator[GraphQLClient]:
    """A client of the app served with these limits."""
    update = {"rate_limit_auth_per_ip": per_ip, "rate_limit_auth_per_account": per_account}
    async with serve(settings.model_copy(update=update)) as url:
        yield GraphQLClient(gql.http, url)


def assert_rate_limited(body: Json, window: int = 60) -> int:
    """Asserts a RATE_LIMITED answer; returns its `extensions.retryAfter` (1..window s)."""
    errors = body.get("errors")
    assert errors, body
    extensions = errors[0]["extensions"]
    assert extensions["code"] == "RATE_LIMITED", errors
    assert set(extensions) == {"code", "retryAfter"}, errors
    retry_after = extensions["retryAfter"]
    assert isinstance(retry_after, int) and 1 <= retry_after <= window, errors
    assert errors[0]["message"] == f"Too many attempts; try again in {retry_after} seconds"
    assert body["data"] is None
    return retry_after


async def test_login_is_limited_per_account(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    async with limited(gql, settings, per_ip="100/minute", per_account="3/minute") as api:
        await sign_up(api, inbox, "ada@example.com")  # login 1 of 3
        await sign_up(api, inbox, "bob@example.com")
        for _ in range(2):
            body = await api.execute(LOGIN, {"e": "ada@example.com", "p": "not the password"})
            assert_error(body, "UNAUTHENTICATED")
        # Now even the right password, in any spelling of the email, waits.
        for email in ("ada@example.com", " ADA@example.COM"):
            body = await api.execute(LOGIN, {"e": email, "p": PASSWORD})
            assert assert_rate_limited(body) > 55
        # Another account from the same IP is not held back.
        await api.data(LOGIN, {"e": "bob@example.com", "p": PASSWORD})


async def test_login_is_limited_per_ip(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    async with limited(gql, settings, per_ip="3/minute", per_account="100/minute") as api:
        for email in ("a@example.com", "b@example.com", "not an email"):
            body = await api.execute(LOGIN, {"e": email, "p": PASSWORD})
            assert_error(body, "UNAUTHENTICATED")
        body = await api.execute(LOGIN, {"e": "c@example.com", "p": PASSWORD})
        assert_rate_limited(body)
        # Each endpoint counts on its own: this IP may still register.
        await api.data(REGISTER, {"e": "c@example.com", "p": PASSWORD})
        assert inbox.to("c@example.com")


async def test_every_account_endpoint_is_limited(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Two tries a minute per account: the third of each is refused before any work."""
    async with limited(gql, settings, per_ip="100/minute", per_account="2/minute") as api:
        token = await sign_up(api, inbox, "dave@example.com")
        calls: list[tuple[str, dict[str, Any], str | None]] = [
            (REGISTER, {"e": "erin@example.com", "p": PASSWORD}, None),
            (VERIFY, {"e": "frank@example.com", "c": "123456", "p": PASSWORD}, None),
            (LOGIN, {"e": "grace@example.com", "p": PASSWORD}, None),
            (REQUEST_RESET, {"e": "heidi@example.com"}, None),
            (RESET, {"e": "ivan@example.com", "c": "123456", "n": NEW_PASSWORD}, None),
            (CHANGE, {"c": "not the password", "n": NEW_PASSWORD}, token),
        ]
        for query, variables, bearer in calls:
            for _ in range(2):
                body = await api.execute(query, variables, token=bearer)
                assert body.get("errors") is None or body["errors"][0]["extensions"]["code"] != (
                    "RATE_LIMITED"
                ), (query, body)
            assert_rate_limited(await api.execute(query, variables, token=bearer))
        # Refused before any work: erin got one code per allowed try, not three.
        assert len(inbox.to("erin@example.com")) == 2


async def test_the_window_moves_on(gql: GraphQLClient, inbox: Inbox, settings: Settings) -> None:
    async with limited(gql, settings, per_ip="100/minute", per_account="2/second") as api:
        variables = {"e": "ada@example.com", "p": PASSWORD}
        for _ in range(2):
            assert_error(await api.execute(LOGIN, variables), "UNAUTHENTICATED")
        retry_after = assert_rate_limited(await api.execute(LOGIN, variables), window=1)
        await asyncio.sleep(retry_after + 0.05)
        assert_error(await api.execute(LOGIN, variables), "UNAUTHENTICATED")


async def test_limiter_counts_ip_and_account_apart() -> None:
    limiter = RateLimiter(storage_uri="memory://", per_ip="2/minute", per_account="1/minute")
    await limiter.hit("login", client_ip="203.0.113.7", account="ada@example.com")
    with pytest.raises(RateLimited) as limited_account:
        await limiter.hit("login", client_ip="203.0.113.8", account="ada@example.com")
    assert 55 < limited_account.value.retry_after <= 60
    assert limited_account.value.extensions() == {"retryAfter": limited_account.value.retry_after}
    await limiter.hit("register", client_ip="203.0.113.7", account="ada@example.com")
    # Unknown IP and account are not counted; a malformed limit or storage is refused.
    for _ in range(3):
        await limiter.hit("login", client_ip=None, account=None)
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(storage_uri="memory://", per_ip="often", per_account="1/minute")
    with pytest.raises(ValueError, match="RATE_LIMIT_STORAGE_URI"):
        RateLimiter(storage_uri="carrier-pigeon://", per_ip="1/minute", per_account="1/minute")
