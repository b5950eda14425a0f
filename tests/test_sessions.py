"""Sessions through the real API: refresh-token rotation and reuse detection, logout, password
change and reset (the reset code read from the real SMTP sink).

Stored rows are checked, and set up (an expired token), with plain SQL on the test's database.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from rag_gql.config import Settings
from rag_gql.db.models import Role
from rag_gql.errors import Forbidden
from rag_gql.resources import open_services
from rag_gql.services.access import Principal
from tests.support import sql
from tests.support.accounts import PASSWORD, REGISTER, sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.smtp import Inbox
from tests.support.uploads import assert_error

EMAIL = "ada@example.com"
NEW_PASSWORD = "purple velvet antelope"
ME = "{ me { id email } }"
SESSION = "accessToken tokenType expiresIn refreshToken refreshExpiresIn"
LOGIN = f"mutation($e: String!, $p: String!) {{ login(email: $e, password: $p) {{ {SESSION} }} }}"
REFRESH = f"mutation($t: String!) {{ refreshToken(token: $t) {{ {SESSION} }} }}"
LOGOUT = "mutation($t: String!) { logout(refreshToken: $t) }"
CHANGE = (
    "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"
)
REQUEST_RESET = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = (
    "mutation($e: String!, $c: String!, $n: String!) "
    "{ resetPassword(email: $e, code: $c, newPassword: $n) }"
)
INVALID_REFRESH = "The refresh token is invalid; log in again"
WRONG_RESET_CODE = "The code is wrong or has expired; request a new one"


async def login(gql: GraphQLClient, email: str = EMAIL, password: str = PASSWORD) -> Json:
    """Logs in; returns the `AuthPayload`."""
    session: Json = (await gql.data(LOGIN, {"e": email, "p": password}))["login"]
    return session


async def refresh(gql: GraphQLClient, token: str) -> Json:
    """Refreshes; returns the new `AuthPayload`."""
    session: Json = (await gql.data(REFRESH, {"t": token}))["refreshToken"]
    return session


async def assert_refused(gql: GraphQLClient, token: str, message: str = INVALID_REFRESH) -> None:
    body = await gql.execute(REFRESH, {"t": token})
    assert assert_error(body, "UNAUTHENTICATED") == message


async def assert_signed_out(gql: GraphQLClient, *sessions: Json) -> None:
    """Neither the access nor the refresh token of any of `sessions` works any more."""
    for session in sessions:
        body = await gql.execute(ME, token=session["accessToken"])
        assert assert_error(body, "UNAUTHENTICATED") == "The access token is invalid"
        await assert_refused(gql, session["refreshToken"])


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def family_rows(settings: Settings, refresh_token: str) -> list[dict[str, object]]:
    """The rows of the family of `refresh_token`, oldest first."""
    async with sql.connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT token_hash, used_at, revoked_at FROM refresh_token WHERE family_id = "
            "(SELECT family_id FROM refresh_token WHERE token_hash = $1) ORDER BY created_at",
            sha256(refresh_token),
        )
    return [dict(row) for row in rows]


# --- refresh tokens -----------------------------------------------------------------------------


async def test_login_opens_a_session_with_a_refresh_token(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    started = datetime.now(UTC)
    session = await login(gql)
    assert session["tokenType"] == "Bearer"
    assert session["expiresIn"] == settings.access_token_ttl == 900
    assert session["refreshExpiresIn"] == settings.refresh_token_ttl == 30 * 86400
    token = session["refreshToken"]
    assert len(token) >= 43  # 32 random bytes, base64url
    assert (await gql.data(ME, token=session["accessToken"]))["me"]["email"] == EMAIL

    # Stored as its SHA-256 only.
    async with sql.connect(settings) as conn:
        row = await conn.fetchrow(
            "SELECT * FROM refresh_token WHERE token_hash = $1", sha256(token)
        )
        assert await conn.fetchval("SELECT count(*) FROM refresh_token") == 2  # sign_up's too
    assert row is not None
    assert token not in str(dict(row))
    assert row["used_at"] is None and row["revoked_at"] is None
    lifetime = timedelta(seconds=settings.refresh_token_ttl)
    assert started + lifetime - timedelta(seconds=5) < row["expires_at"]
    assert row["expires_at"] < started + lifetime + timedelta(seconds=60)


async def test_refresh_rotates_and_reuse_revokes_the_family(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    first = await login(gql)
    other = await login(gql)  # another device: its own family

    second = await refresh(gql, first["refreshToken"])
    assert second["refreshToken"] != first["refreshToken"]
    assert second["refreshExpiresIn"] == settings.refresh_token_ttl
    assert (await gql.data(ME, token=second["accessToken"]))["me"]["email"] == EMAIL
    third = await refresh(gql, second["refreshToken"])
    rows = await family_rows(settings, first["refreshToken"])
    assert len(rows) == 3
    assert [row["used_at"] is not None for row in rows] == [True, True, False]

    # The used token again: refused, and the whole family dies, its newest token too.
    await assert_refused(gql, first["refreshToken"])
    await assert_refused(gql, third["refreshToken"])
    await assert_refused(gql, second["refreshToken"])
    rows = await family_rows(settings, first["refreshToken"])
    assert all(row["revoked_at"] is not None for row in rows)

    # The other session is untouched.
    assert (await refresh(gql, other["refreshToken"]))["refreshToken"]
    for garbage in ("", "not-a-token", first["accessToken"]):
        await assert_refused(gql, garbage)


async def test_concurrent_refreshes_with_one_token_let_exactly_one_through(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    token = (await login(gql))["refreshToken"]

    bodies = await asyncio.gather(*(gql.execute(REFRESH, {"t": token}) for _ in range(5)))
    won = [body["data"]["refreshToken"] for body in bodies if not body.get("errors")]
    lost = [body for body in bodies if body.get("errors")]
    assert len(won) == 1 and len(lost) == 4, bodies
    for body in lost:
        assert assert_error(body, "UNAUTHENTICATED") == INVALID_REFRESH
    # Each loser presented a used token: the family, the winner's new token included, is gone.
    await assert_refused(gql, won[0]["refreshToken"])
    assert len(await family_rows(settings, token)) == 2


async def test_logout_ends_only_that_session(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    phone = await login(gql)
    laptop = await login(gql)
    rotated = await refresh(gql, phone["refreshToken"])

    # The family's older token ends the session as well as its newest one.
    assert await gql.data(LOGOUT, {"t": phone["refreshToken"]}) == {"logout": True}
    await assert_refused(gql, rotated["refreshToken"])
    await refresh(gql, laptop["refreshToken"])

    # Idempotent, and silent about tokens it does not know.
    for token in (phone["refreshToken"], rotated["refreshToken"], "no-such-token", ""):
        assert await gql.data(LOGOUT, {"t": token}) == {"logout": True}
    assert all(
        row["revoked_at"] is not None for row in await family_rows(settings, phone["refreshToken"])
    )
    assert all(
        row["revoked_at"] is None for row in await family_rows(settings, laptop["refreshToken"])
    )


async def test_expired_refresh_token_is_refused(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    session = await login(gql)
    async with sql.connect(settings) as conn:
        status = await conn.execute(
            "UPDATE refresh_token SET expires_at = now() - interval '1 second' "
            "WHERE token_hash = $1",
            sha256(session["refreshToken"]),
        )
    assert status == "UPDATE 1"
    await assert_refused(
        gql, session["refreshToken"], "The refresh token has expired; log in again"
    )


# --- password change ----------------------------------------------------------------------------


CHANGE_EMAIL = "grizwald@example.com"


async def test_change_password_ends_every_session(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, CHANGE_EMAIL)
    first = await login(gql, CHANGE_EMAIL)
    second = await login(gql, CHANGE_EMAIL)
    token = first["accessToken"]

    body = await gql.execute(CHANGE, {"c": "not the password", "n": NEW_PASSWORD}, token=token)
    assert assert_error(body, "UNAUTHENTICATED") == "The current password is wrong"
    body = await gql.execute(CHANGE, {"c": PASSWORD, "n": "grizwald1987"}, token=token)
    assert "too easy to guess" in assert_error(body, "BAD_USER_INPUT")
    body = await gql.execute(CHANGE, {"c": PASSWORD, "n": NEW_PASSWORD})
    assert_error(body, "UNAUTHENTICATED", "Authorization: Bearer")
    # Nothing changed so far.
    assert (await gql.data(ME, token=token))["me"]["email"] == CHANGE_EMAIL

    changed = await gql.data(CHANGE, {"c": PASSWORD, "n": NEW_PASSWORD}, token=token)
    assert changed == {"changePassword": True}
    await assert_signed_out(gql, first, second)
    async with sql.connect(settings) as conn:
        row = await conn.fetchrow(
            'SELECT token_version, password_hash FROM "user" WHERE email = $1', CHANGE_EMAIL
        )
        live = await conn.fetchval("SELECT count(*) FROM refresh_token WHERE revoked_at IS NULL")
    assert row is not None and row["token_version"] == 1
    assert row["password_hash"].startswith("$argon2id$")
    assert live == 0

    body = await gql.execute(LOGIN, {"e": CHANGE_EMAIL, "p": PASSWORD})
    assert_error(body, "UNAUTHENTICATED")
    fresh = await login(gql, CHANGE_EMAIL, NEW_PASSWORD)
    assert (await gql.data(ME, token=fresh["accessToken"]))["me"]["email"] == CHANGE_EMAIL
    await refresh(gql, fresh["refreshToken"])


async def test_an_api_key_cannot_change_a_password(settings: Settings) -> None:
    """The service refuses a principal without a user (over HTTP: an `X-Api-Key` caller)."""
    key = Principal(workspace_id=uuid.uuid4(), role=Role.OWNER, api_key_id=uuid.uuid4())
    async with open_services(settings, check_upstream=False) as services:
        with pytest.raises(Forbidden):
            await services.auth.change_password(key, PASSWORD, NEW_PASSWORD)


# --- password reset -----------------------------------------------------------------------------


async def request_code(gql: GraphQLClient, inbox: Inbox, typed: str = EMAIL) -> str:
    """Asks for a reset code for `typed` (any spelling of EMAIL); returns the emailed code."""
    before = len(inbox.to(EMAIL))
    assert await gql.data(REQUEST_RESET, {"e": typed}) == {"requestPasswordReset": True}
    return await inbox.wait_for_code(EMAIL, after=before)


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_password_reset_end_to_end(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    session = await login(gql)

    code = await request_code(gql, inbox, " Ada@Example.COM ")
    message = inbox.to(EMAIL)[-1]
    assert "password reset" in message["Subject"]
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes) and "expires in 10 minutes" in body.decode()
    async with sql.connect(settings) as conn:
        stored = await conn.fetchrow("SELECT purpose, code_hash FROM email_code")
    assert stored is not None and stored["purpose"] == "reset"
    assert code not in stored["code_hash"] and len(stored["code_hash"]) == 64

    variables = {"e": EMAIL, "c": other_code(code), "n": NEW_PASSWORD}
    assert assert_error(await gql.execute(RESET, variables), "BAD_USER_INPUT") == WRONG_RESET_CODE
    # A guessable new password is refused before the code is even looked at.
    variables = {"e": EMAIL, "c": code, "n": "ada12345"}
    assert "too easy to guess" in assert_error(
        await gql.execute(RESET, variables), "BAD_USER_INPUT"
    )
    # The session still works until the reset.
    assert (await gql.data(ME, token=session["accessToken"]))["me"]["email"] == EMAIL

    reset = await gql.data(RESET, {"e": "ADA@example.com", "c": f" {code} ", "n": NEW_PASSWORD})
    assert reset == {"resetPassword": True}
    await assert_signed_out(gql, session)
    body = await gql.execute(LOGIN, {"e": EMAIL, "p": PASSWORD})
    assert_error(body, "UNAUTHENTICATED")
    await login(gql, EMAIL, NEW_PASSWORD)
    # The code is used up.
    variables = {"e": EMAIL, "c": code, "n": "another velvet antelope"}
    assert assert_error(await gql.execute(RESET, variables), "BAD_USER_INPUT") == WRONG_RESET_CODE


async def test_password_reset_says_nothing_about_accounts(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    await gql.data(REGISTER, {"e": "bob@example.com", "p": PASSWORD})  # never verified
    await inbox.wait_for_code("bob@example.com")

    for email in ("nobody@example.com", "bob@example.com"):
        assert await gql.data(REQUEST_RESET, {"e": email}) == {"requestPasswordReset": True}
    await request_code(gql, inbox)  # ada's mail arrives: the others would have by now
    assert inbox.to("nobody@example.com") == []
    assert len(inbox.to("bob@example.com")) == 1  # only the verification code
    async with sql.connect(settings) as conn:
        purposes = await conn.fetch("SELECT purpose FROM email_code ORDER BY purpose")
    assert [row["purpose"] for row in purposes] == ["reset", "verify"]  # ada's, bob's

    # Wrong code for a real account, any code for a missing or unverified one: one answer.
    answers = set()
    for email in (EMAIL, "nobody@example.com", "bob@example.com"):
        body = await gql.execute(RESET, {"e": email, "c": "123456", "n": NEW_PASSWORD})
        answers.add((assert_error(body, "BAD_USER_INPUT"), str(body["errors"][0]["extensions"])))
    assert answers == {(WRONG_RESET_CODE, "{'code': 'BAD_USER_INPUT'}")}


async def test_reset_code_dies_after_max_attempts(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    await sign_up(gql, inbox, EMAIL)
    code = await request_code(gql, inbox)
    for _ in range(settings.otp_max_attempts):
        body = await gql.execute(RESET, {"e": EMAIL, "c": other_code(code), "n": NEW_PASSWORD})
        assert assert_error(body, "BAD_USER_INPUT") == WRONG_RESET_CODE
    body = await gql.execute(RESET, {"e": EMAIL, "c": code, "n": NEW_PASSWORD})
    assert assert_error(body, "BAD_USER_INPUT") == WRONG_RESET_CODE
    await login(gql)  # the password is unchanged

    # A new code (with a fresh count) works; expired ones do not.
    code = await request_code(gql, inbox)
    async with sql.connect(settings) as conn:
        await conn.execute("UPDATE email_code SET expires_at = now() - interval '1 second'")
    body = await gql.execute(RESET, {"e": EMAIL, "c": code, "n": NEW_PASSWORD})
    assert assert_error(body, "BAD_USER_INPUT") == WRONG_RESET_CODE
    code = await request_code(gql, inbox)
    await gql.data(RESET, {"e": EMAIL, "c": code, "n": NEW_PASSWORD})
    await login(gql, EMAIL, NEW_PASSWORD)
