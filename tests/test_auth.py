"""Accounts through the real API: registration with an emailed code, login, tokens, WebSocket auth.

Codes are read from the real SMTP sink; the stored rows are checked with plain SQL (asyncpg)
against the test's own database. Error answers are checked for their `extensions.code` and for
a message a person can act on, with nothing internal in it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from tests.support import sql
from tests.support.accounts import LOGIN, PASSWORD, REGISTER, VERIFY, sign_up
from tests.support.graphql_client import GraphQLClient, Json, init, subscribe
from tests.support.serving import serve
from tests.support.smtp import Inbox

ME = "{ me { id email } }"
REGISTER_FULL = (
    "mutation($e: String!, $p: String!) "
    "{ register(email: $e, password: $p) { email codeExpiresAt } }"
)
WRONG_LOGIN = "Wrong email or password"
WRONG_CODE = "The code is wrong or has expired; register again for a new one"
OTHER_SECRET = "another-secret-" + "y" * 40
# Words that would betray a stack trace, SQL or library internals in a client-facing message.
INTERNALS = ("traceback", 'file "', "sqlalchemy", "asyncpg", "psycopg", "joserfc", "argon2", "0x")


# --- helpers -------------------------------------------------------------------------------------


def assert_error(body: Json, code: str, message: str | None = None) -> str:
    """Asserts the first error's code (and exact message, if given); returns the message."""
    errors = body.get("errors")
    assert errors, body
    error = errors[0]
    assert error["extensions"]["code"] == code, error
    assert set(error["extensions"]) <= {"code"}, error  # no stacktrace/exception extensions
    text = error["message"]
    assert isinstance(text, str) and text.strip(), error
    assert not any(word in text.lower() for word in INTERNALS), text
    if message is not None:
        assert text == message, error
    data = body.get("data")
    assert data is None or all(value is None for value in data.values()), body
    return text


def jwt_part(token: str, index: int) -> Json:
    """Part `index` (0: header, 1: claims) of a compact JWS, decoded without any check."""
    parts = token.split(".")
    assert len(parts) == 3, token
    segment = parts[index]
    decoded: Json = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def sign(claims: dict[str, Any], secret: str) -> str:
    """A compact HS256 JWT of `claims` signed with `secret`."""
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret))


def other_code(code: str) -> str:
    """A 6-digit code that is not `code`."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


def closed_port() -> int:
    """A loopback port nobody listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def register(gql: GraphQLClient, inbox: Inbox, email: str, password: str = PASSWORD) -> str:
    """Registers (or registers again) and returns the code from the new email."""
    before = len(inbox.to(email))
    await gql.data(REGISTER, {"e": email, "p": password})
    return await inbox.wait_for_code(email, after=before)


async def is_verified(settings: Settings, email: str) -> bool:
    async with sql.connect(settings) as conn:
        verified_at = await conn.fetchval('SELECT verified_at FROM "user" WHERE email = $1', email)
    return verified_at is not None


# --- registration, verification, login -------------------------------------------------------


async def test_register_verify_login_me(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """The whole sign-up, with a mixed-case email: stored, mailed and matched lower-cased."""
    email = "ada@example.com"
    started = datetime.now(UTC)
    data = await gql.data(REGISTER_FULL, {"e": "  Ada@Example.com ", "p": PASSWORD})
    assert data["register"]["email"] == email
    expires = datetime.fromisoformat(data["register"]["codeExpiresAt"])
    assert started + timedelta(seconds=590) < expires < started + timedelta(seconds=610)

    code = await inbox.wait_for_code(email)
    (message,) = inbox.to(email)
    assert message["To"] == email
    assert "tests@example.com" in message["From"]
    assert "verification code" in message["Subject"]
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert "expires in 10 minutes" in body.decode()

    # Secrets at rest: no password before verification, an HMAC of the code (never the code).
    async with sql.connect(settings) as conn:
        row = await conn.fetchrow('SELECT id, password_hash FROM "user" WHERE email = $1', email)
        assert row is not None
        code_hash = await conn.fetchval(
            "SELECT code_hash FROM email_code WHERE user_id = $1", row["id"]
        )
    assert row["password_hash"] == "!"
    assert isinstance(code_hash, str)
    assert code not in code_hash
    assert len(code_hash) == 64
    int(code_hash, 16)  # hex

    user = (await gql.data(VERIFY, {"e": "ADA@EXAMPLE.COM", "c": code, "p": PASSWORD}))[
        "verifyEmail"
    ]
    assert user == {"id": str(row["id"]), "email": email}
    async with sql.connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM email_code") == 0  # used up
        password_hash = await conn.fetchval(
            'SELECT password_hash FROM "user" WHERE email = $1', email
        )
    # Set at verification: an Argon2id hash.
    assert password_hash.startswith("$argon2id$")
    assert PASSWORD not in password_hash

    login = (await gql.data(LOGIN, {"e": email, "p": PASSWORD}))["login"]
    assert login["tokenType"] == "Bearer"
    assert login["expiresIn"] > 0
    token = login["accessToken"]
    assert jwt_part(token, 0)["alg"] == "HS256"
    claims = jwt_part(token, 1)
    assert claims["sub"] == user["id"]
    now = time.time()
    assert now - 60 <= claims["iat"] <= now + 5
    assert claims["exp"] - claims["iat"] == login["expiresIn"]

    me = await gql.data(ME, token=token)
    assert me["me"] == user
    # Any spelling of the email logs in.
    login = (await gql.data(LOGIN, {"e": "aDa@eXample.COM", "p": PASSWORD}))["login"]
    assert (await gql.data(ME, token=login["accessToken"]))["me"] == user


async def test_login_refusals(gql: GraphQLClient, inbox: Inbox, settings: Settings) -> None:
    """Wrong password, unknown email and unverified account look alike (an unverified
    account has no password yet: `verifyEmail` sets it)."""
    await sign_up(gql, inbox, "ada@example.com")
    await register(gql, inbox, "bob@example.com")  # never verified

    refused = [
        {"e": "ada@example.com", "p": "not the password"},
        {"e": "nobody@example.com", "p": PASSWORD},
        {"e": "not an email", "p": PASSWORD},
        {"e": "bob@example.com", "p": "not the password"},
        {"e": "bob@example.com", "p": PASSWORD},  # the password bob registered with
    ]
    for variables in refused:
        body = await gql.execute(LOGIN, variables)
        assert_error(body, "UNAUTHENTICATED", WRONG_LOGIN)
    assert not await is_verified(settings, "bob@example.com")


async def test_wrong_code_is_refused_and_account_stays_unverified(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    email = "ada@example.com"
    code = await register(gql, inbox, email)

    for wrong in (other_code(code), "abcdef", code + "0"):
        body = await gql.execute(VERIFY, {"e": email, "c": wrong, "p": PASSWORD})
        assert_error(body, "BAD_USER_INPUT", WRONG_CODE)
    # An unknown email gets the very same answer.
    body = await gql.execute(VERIFY, {"e": "nobody@example.com", "c": code, "p": PASSWORD})
    assert_error(body, "BAD_USER_INPUT", WRONG_CODE)
    assert not await is_verified(settings, email)
    body = await gql.execute(LOGIN, {"e": email, "p": PASSWORD})
    assert_error(body, "UNAUTHENTICATED")

    # Fewer than OTP_MAX_ATTEMPTS wrong tries: the right code (spaces trimmed) still works.
    await gql.data(VERIFY, {"e": email, "c": f" {code} ", "p": PASSWORD})
    assert await is_verified(settings, email)


async def test_code_dies_after_max_attempts(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    email = "ada@example.com"
    code = await register(gql, inbox, email)
    assert settings.otp_max_attempts == 5

    for _ in range(settings.otp_max_attempts):
        body = await gql.execute(VERIFY, {"e": email, "c": other_code(code), "p": PASSWORD})
        assert_error(body, "BAD_USER_INPUT", WRONG_CODE)
    body = await gql.execute(VERIFY, {"e": email, "c": code, "p": PASSWORD})
    assert "register again" in assert_error(body, "BAD_USER_INPUT")
    assert not await is_verified(settings, email)

    # Registering again sends a fresh code with a fresh count.
    fresh = await register(gql, inbox, email)
    await gql.data(VERIFY, {"e": email, "c": fresh, "p": PASSWORD})
    assert await is_verified(settings, email)


async def test_expired_code_is_refused(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    email = "ada@example.com"
    code = await register(gql, inbox, email)
    async with sql.connect(settings) as conn:
        status = await conn.execute(
            "UPDATE email_code SET expires_at = now() - interval '1 second'"
        )
    assert status == "UPDATE 1"

    body = await gql.execute(VERIFY, {"e": email, "c": code, "p": PASSWORD})
    assert_error(body, "BAD_USER_INPUT", WRONG_CODE)
    assert not await is_verified(settings, email)


async def test_registering_again_replaces_the_code(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Only the newest code works; the password is the one `verifyEmail` is given."""
    email = "ada@example.com"
    old = await register(gql, inbox, email, password="first password")
    new = await register(gql, inbox, email, password="second password")
    while new == old:  # one chance in a million
        new = await register(gql, inbox, email, password="second password")
    async with sql.connect(settings) as conn:
        assert await conn.fetchval('SELECT count(*) FROM "user"') == 1
        assert await conn.fetchval("SELECT count(*) FROM email_code") == 1

    body = await gql.execute(VERIFY, {"e": email, "c": old, "p": PASSWORD})
    assert_error(body, "BAD_USER_INPUT", WRONG_CODE)
    await gql.data(VERIFY, {"e": email, "c": new, "p": "third password"})

    for registered in ("first password", "second password"):
        body = await gql.execute(LOGIN, {"e": email, "p": registered})
        assert_error(body, "UNAUTHENTICATED", WRONG_LOGIN)
    await gql.data(LOGIN, {"e": email, "p": "third password"})


async def test_verified_email_cannot_register_or_verify_again(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    email = "ada@example.com"
    await sign_up(gql, inbox, email)
    sent = len(inbox.to(email))

    # Answered as for a new address (tests/test_account_security.py); the owner gets a notice.
    await gql.data(REGISTER, {"e": "ADA@example.com", "p": "a new password"})
    assert len(inbox.to(email)) == sent + 1
    # Any code is wrong now, and the account's id is not given away.
    body = await gql.execute(VERIFY, {"e": email, "c": "000000", "p": PASSWORD})
    assert_error(body, "BAD_USER_INPUT", WRONG_CODE)
    # The account is untouched: its password still works, the new one does not.
    body = await gql.execute(LOGIN, {"e": email, "p": "a new password"})
    assert_error(body, "UNAUTHENTICATED", WRONG_LOGIN)
    await gql.data(LOGIN, {"e": email, "p": PASSWORD})


async def test_invalid_registration_input(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    for email in ("not-an-email", "", "ada@", "@example.com", "ada@example", "a b@example.com"):
        body = await gql.execute(REGISTER, {"e": email, "p": PASSWORD})
        assert "email" in assert_error(body, "BAD_USER_INPUT").lower(), email
    for password in ("", "seven77", " " * 7):
        body = await gql.execute(REGISTER, {"e": "ada@example.com", "p": password})
        assert "at least 8" in assert_error(body, "BAD_USER_INPUT"), password
    body = await gql.execute(REGISTER, {"e": "ada@example.com", "p": "x" * 1025})
    assert "at most 1024" in assert_error(body, "BAD_USER_INPUT")

    assert inbox.messages == []
    async with sql.connect(settings) as conn:
        assert await conn.fetchval('SELECT count(*) FROM "user"') == 0
    await gql.data(REGISTER, {"e": "ada@example.com", "p": "Tr0ub4d&"})  # 8 is enough


async def test_guessable_passwords_are_refused(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """zxcvbn scores below 2 are refused with its advice; the email counts as a known word."""
    email = "grizwald@example.com"
    refused = {
        "password1": "This is a very common password.",
        "qwertyuiop": "common password",
        "aaaaaaaaaaaa": "Repeats",
        "grizwald1987": "Add another word or two",  # fine for anyone but grizwald@...
        "grizwald@example.com": "Add another word or two",
    }
    for password, advice in refused.items():
        body = await gql.execute(REGISTER, {"e": email, "p": password})
        message = assert_error(body, "BAD_USER_INPUT")
        assert message.startswith("The password is too easy to guess."), message
        assert advice in message, (password, message)
    # Only the first 72 characters are scored (zxcvbn's cost grows fast with length).
    body = await gql.execute(REGISTER, {"e": email, "p": "a" * 1024})
    assert "too easy to guess" in assert_error(body, "BAD_USER_INPUT")
    assert inbox.messages == []
    async with sql.connect(settings) as conn:
        assert await conn.fetchval('SELECT count(*) FROM "user"') == 0

    await gql.data(REGISTER, {"e": "bob@example.com", "p": "grizwald1987"})
    await gql.data(REGISTER, {"e": email, "p": "x" * 60 + "7#Qp!zk" + "a" * 900})


# --- access tokens over HTTP ---------------------------------------------------------------------


async def test_me_refuses_missing_bad_and_expired_tokens(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    sub = jwt_part(token, 1)["sub"]
    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.get_secret_value()
    now = int(time.time())

    body = await gql.execute(ME)
    assert "Authorization: Bearer" in assert_error(body, "UNAUTHENTICATED")
    for header in ("", "Bearer", f"Basic {token}", token, f"Token {token}"):
        response = await gql.http.post(
            f"{gql.base_url}/graphql", json={"query": ME}, headers={"Authorization": header}
        )
        assert response.status_code == 200
        assert_error(response.json(), "UNAUTHENTICATED")

    header, payload, signature = token.split(".")
    alg_none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    invalid = {
        "garbage": "not-a-jwt",
        "three garbage parts": "abc.def.ghi",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "alg none": f"{alg_none}.{payload}.",
        "other secret": sign({"sub": sub, "iat": now, "exp": now + 600}, OTHER_SECRET),
        "sub not a uuid": sign({"sub": "ada", "iat": now, "exp": now + 600}, secret),
        "unknown user": sign({"sub": str(uuid.uuid4()), "iat": now, "exp": now + 600}, secret),
        "no exp": sign({"sub": sub, "iat": now}, secret),
        "no sub": sign({"iat": now, "exp": now + 600}, secret),
    }
    for name, bad in invalid.items():
        body = await gql.execute(ME, token=bad)
        assert assert_error(body, "UNAUTHENTICATED") == "The access token is invalid", name

    expired = sign({"sub": sub, "iat": now - 7200, "exp": now - 3600}, secret)
    body = await gql.execute(ME, token=expired)
    assert "expired" in assert_error(body, "UNAUTHENTICATED")

    # A token signed with the server's secret works, until its account is gone.
    await gql.data(ME, token=sign({"sub": sub, "iat": now, "exp": now + 600}, secret))
    async with sql.connect(settings) as conn:
        await conn.execute('DELETE FROM "user" WHERE id = $1', uuid.UUID(sub))
    body = await gql.execute(ME, token=token)
    assert_error(body, "UNAUTHENTICATED", "The access token is invalid")


# --- WebSocket (graphql-transport-ws) ----------------------------------------------------------


async def close_code(closing: Awaitable[object]) -> int:
    """Awaits `closing` (a receive on a socket the server closes); returns the close code."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(closing, timeout=10)
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code


async def test_websocket_authentication(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    async with gql.websocket() as idle:  # sends no connection_init at all
        opened = time.monotonic()
        assert idle.subprotocol == "graphql-transport-ws"

        token = await sign_up(gql, inbox, "ada@example.com")
        sub = jwt_part(token, 1)["sub"]
        assert settings.jwt_secret is not None
        now = int(time.time())
        claims = {"sub": sub, "iat": now - 7200, "exp": now - 3600}
        expired = sign(claims, settings.jwt_secret.get_secret_value())
        forged = sign({"sub": sub, "iat": now, "exp": now + 600}, OTHER_SECRET)
        refused: list[Json] = [
            {},
            {"authorization": ""},
            {"authorization": token},  # no scheme
            {"authorization": "Bearer garbage"},
            {"authorization": f"Bearer {forged}"},
            {"authorization": f"Bearer {expired}"},
            {"authorization": 42},
        ]
        for payload in refused:
            async with gql.websocket() as ws:
                assert await close_code(init(ws, payload)) == 4403, payload

        for key in ("authorization", "Authorization"):
            async with gql.websocket() as ws:
                reply = await asyncio.wait_for(init(ws, {key: f"Bearer {token}"}), timeout=10)
                assert reply["type"] == "connection_ack"
                results = [p async for p in subscribe(ws, "{ me { email } }", {})]
                assert results == [{"data": {"me": {"email": "ada@example.com"}}}]

        # The idle socket is closed once the 3 s for connection_init are over (not before).
        assert await close_code(idle.recv()) == 4408
        assert time.monotonic() - opened >= 2.5


# --- mail failure -------------------------------------------------------------------------------


async def test_register_reports_mail_failure_then_works_again(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    email = "ada@example.com"
    broken = settings.model_copy(update={"smtp_port": closed_port(), "smtp_timeout": 5.0})
    async with serve(broken) as url:
        body = await GraphQLClient(gql.http, url).execute(REGISTER, {"e": email, "p": PASSWORD})
    assert "mail server" in assert_error(body, "UPSTREAM_UNAVAILABLE")
    assert inbox.to(email) == []

    code = await register(gql, inbox, email)
    await gql.data(VERIFY, {"e": email, "c": code, "p": PASSWORD})
    await gql.data(LOGIN, {"e": email, "p": PASSWORD})
