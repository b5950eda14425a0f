"""Accounts under attack: pre-hijacked registrations, probing which addresses have accounts,
guessing one-time codes across many codes.

All through the real API; codes and notices are read from the real SMTP sink, and the stored
rows are checked with plain SQL. Row-level security of `code_failure` is checked as the app role.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import Message

import asyncpg
import pytest

from rag_gql.config import Settings
from rag_gql.db import Database
from tests.support import sql
from tests.support.accounts import LOGIN, PASSWORD, REGISTER, VERIFY, sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.serving import serve
from tests.support.smtp import Inbox
from tests.support.uploads import assert_error

REGISTER_FULL = (
    "mutation($e: String!, $p: String!) "
    "{ register(email: $e, password: $p) { __typename email codeExpiresAt } }"
)
REQUEST_RESET = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = (
    "mutation($e: String!, $c: String!, $n: String!) "
    "{ resetPassword(email: $e, code: $c, newPassword: $n) }"
)
WRONG_CODE = "The code is wrong or has expired; register again for a new one"
WRONG_RESET_CODE = "The code is wrong or has expired; request a new one"
TOO_MANY = "Too many wrong codes for this email in 24 hours; try again later"
ATTACKER_PASSWORD = "mallory was here first"
VICTIM_PASSWORD = "victim's own passphrase"
NEW_PASSWORD = "a brand new passphrase"
CAP = 3


def other_code(code: str) -> str:
    """A 6-digit code that is not `code`."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def register(gql: GraphQLClient, inbox: Inbox, email: str, password: str) -> str:
    """Registers (or registers again) and returns the code from the new email."""
    before = len(inbox.to(email))
    await gql.data(REGISTER, {"e": email, "p": password})
    return await inbox.wait_for_code(email, after=before)


async def request_reset(gql: GraphQLClient, inbox: Inbox, email: str) -> str:
    """Asks for a reset code; returns it from the new email."""
    before = len(inbox.to(email))
    assert await gql.data(REQUEST_RESET, {"e": email}) == {"requestPasswordReset": True}
    return await inbox.wait_for_code(email, after=before)


async def password_hash(settings: Settings, email: str) -> str | None:
    async with sql.connect(settings) as conn:
        found: str | None = await conn.fetchval(
            'SELECT password_hash FROM "user" WHERE email = $1', email
        )
    return found


async def logs_in(gql: GraphQLClient, email: str, password: str) -> bool:
    body = await gql.execute(LOGIN, {"e": email, "p": password})
    if body.get("errors"):
        assert_error(body, "UNAUTHENTICATED", "Wrong email or password")
        return False
    return True


def error_of(body: Json) -> tuple[str, str, list[str]]:
    """The first error's code, message and extension names: what tells two answers apart."""
    assert body.get("data") is None, body
    (error,) = body["errors"]
    return error["extensions"]["code"], error["message"], sorted(error["extensions"])


# --- pre-hijacked accounts -----------------------------------------------------------------------


async def test_a_pre_hijacked_registration_opens_with_the_mailbox_owner_s_password(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """The pre-hijacking sequence (Sudhodanan and Paverd, USENIX Security 2022): the attacker
    registers the victim's address, the victim registers too, the attacker registers again,
    and the victim uses the newest code they received. The account opens with the victim's
    password, never the attacker's."""
    victim = "victim@example.com"
    await gql.data(REGISTER, {"e": victim, "p": ATTACKER_PASSWORD})  # the code reaches the victim
    assert await password_hash(settings, victim) == "!"  # nothing the attacker chose is stored
    await register(gql, inbox, victim, VICTIM_PASSWORD)
    newest = await register(gql, inbox, victim, ATTACKER_PASSWORD)  # the attacker, again
    assert await password_hash(settings, victim) == "!"
    # Without the code the attacker cannot log in, nor verify with his password.
    assert not await logs_in(gql, victim, ATTACKER_PASSWORD)

    # The victim types the newest code, with the password they registered with.
    await gql.data(VERIFY, {"e": victim, "c": newest, "p": VICTIM_PASSWORD})
    assert not await logs_in(gql, victim, ATTACKER_PASSWORD)
    assert await logs_in(gql, victim, VICTIM_PASSWORD)
    # The code is used up: the attacker, told it later, cannot set his password with it.
    body = await gql.execute(VERIFY, {"e": victim, "c": newest, "p": ATTACKER_PASSWORD})
    assert assert_error(body, "BAD_USER_INPUT") == WRONG_CODE
    assert not await logs_in(gql, victim, ATTACKER_PASSWORD)


async def test_verify_email_checks_the_password_before_the_code(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """A password the policy refuses is refused first: the code stays live, nothing counted."""
    email = "ada@example.com"
    code = await register(gql, inbox, email, PASSWORD)
    for weak, advice in (("seven77", "at least 8"), ("password1", "too easy to guess")):
        body = await gql.execute(VERIFY, {"e": email, "c": code, "p": weak})
        assert_error(body, "BAD_USER_INPUT", advice)
    async with sql.connect(settings) as conn:
        assert await conn.fetchval("SELECT attempts FROM email_code") == 0
        assert await conn.fetchval("SELECT count(*) FROM code_failure") == 0
    # The victim-only flow: register, verify with a (possibly other) password, log in.
    user = (await gql.data(VERIFY, {"e": email, "c": code, "p": NEW_PASSWORD}))["verifyEmail"]
    assert user["email"] == email
    assert not await logs_in(gql, email, PASSWORD)
    assert await logs_in(gql, email, NEW_PASSWORD)
    assert (await password_hash(settings, email) or "").startswith("$argon2id$")


# --- register tells no one which addresses have accounts -----------------------------------------


async def test_register_answers_a_verified_address_as_a_new_one_and_mails_its_owner(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    owner = "owner@example.com"
    await sign_up(gql, inbox, owner)
    await register(gql, inbox, "pending@example.com", PASSWORD)
    async with sql.connect(settings) as conn:
        owner_id = await conn.fetchval('SELECT id FROM "user" WHERE email = $1', owner)
        users_before = await conn.fetchval('SELECT count(*) FROM "user"')

    answers: dict[str, Message] = {}
    for email in (owner, "newcomer@example.com", "pending@example.com"):
        before = len(inbox.to(email))
        started = datetime.now(UTC)
        body = await gql.execute(REGISTER_FULL, {"e": email.upper(), "p": "an intruder's pick"})
        finished = datetime.now(UTC)
        assert set(body) == {"data"}, body
        payload = body["data"]["register"]
        assert set(payload) == {"__typename", "email", "codeExpiresAt"}
        assert payload["__typename"] == "RegisterPayload"
        assert payload["email"] == email
        expires = datetime.fromisoformat(payload["codeExpiresAt"])
        ttl = timedelta(seconds=settings.otp_ttl)
        assert started + ttl - timedelta(seconds=1) <= expires <= finished + ttl
        answers[email] = await inbox.wait_for(email, after=before)

    # The owner got a notice, not a code; the others a code.
    notice = answers[owner]
    assert "tried to register" in notice["Subject"]
    text = notice.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert "log in" in text.decode() and "reset your password" in text.decode()
    assert "code" not in text.decode().lower()
    for email in ("newcomer@example.com", "pending@example.com"):
        assert "verification code" in answers[email]["Subject"]

    async with sql.connect(settings) as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM email_code WHERE user_id = $1", owner_id) == 0
        )
        assert await conn.fetchval('SELECT count(*) FROM "user"') == users_before + 1
    # The account is as it was: its password works, the intruder's does not.
    assert await logs_in(gql, owner, PASSWORD)
    assert not await logs_in(gql, owner, "an intruder's pick")


# --- a daily cap on code attempts, across codes --------------------------------------------------


@pytest.fixture
async def capped(gql: GraphQLClient, settings: Settings) -> AsyncIterator[GraphQLClient]:
    """The app with OTP_DAILY_MAX_ATTEMPTS = 3 (per-code tries stay at 5)."""
    assert settings.otp_max_attempts > CAP
    async with serve(settings.model_copy(update={"otp_daily_max_attempts": CAP})) as url:
        yield GraphQLClient(gql.http, url)


def assert_capped(body: Json) -> None:
    code, message, extensions = error_of(body)
    assert (code, message, extensions) == ("RATE_LIMITED", TOO_MANY, ["code", "retryAfter"])
    retry_after = body["errors"][0]["extensions"]["retryAfter"]
    assert 86_000 < retry_after <= 86_400, retry_after


async def test_verification_attempts_are_capped_per_day_across_codes(
    capped: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """After OTP_DAILY_MAX_ATTEMPTS failures in 24 hours even the right code of a fresh
    registration is refused; an address with no account answers the very same, step by step."""
    email, nobody = "ada@example.com", "nobody@example.com"
    code = await register(capped, inbox, email, PASSWORD)
    for _ in range(CAP):
        known = await capped.execute(VERIFY, {"e": email, "c": other_code(code), "p": PASSWORD})
        unknown = await capped.execute(VERIFY, {"e": nobody, "c": other_code(code), "p": PASSWORD})
        assert error_of(known) == error_of(unknown) == ("BAD_USER_INPUT", WRONG_CODE, ["code"])

    fresh = await register(capped, inbox, email, PASSWORD)  # a new code: the count stays
    for body in (
        await capped.execute(VERIFY, {"e": email, "c": code, "p": PASSWORD}),
        await capped.execute(VERIFY, {"e": email, "c": fresh, "p": PASSWORD}),
        await capped.execute(VERIFY, {"e": nobody, "c": fresh, "p": PASSWORD}),
    ):
        assert_capped(body)
    async with sql.connect(settings) as conn:
        assert await conn.fetchval('SELECT verified_at FROM "user" WHERE email = $1', email) is None
        # Refusals at the cap are not counted: the cap lifts a day after the oldest failure.
        assert await conn.fetchval("SELECT count(*) FROM code_failure") == 2 * CAP
    await sign_up(capped, inbox, "bob@example.com")  # another address has its own count

    # A day later the failures have left the window (and are pruned at the next failure).
    async with sql.connect(settings) as conn:
        await conn.execute("UPDATE code_failure SET failed_at = failed_at - interval '1 day'")
    await capped.data(VERIFY, {"e": email, "c": fresh, "p": PASSWORD})
    assert await logs_in(capped, email, PASSWORD)
    unknown = await capped.execute(VERIFY, {"e": nobody, "c": fresh, "p": PASSWORD})
    assert error_of(unknown) == ("BAD_USER_INPUT", WRONG_CODE, ["code"])
    async with sql.connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM code_failure") == 1


async def test_reset_attempts_are_capped_per_day_across_codes(
    capped: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    email, nobody = "ada@example.com", "nobody@example.com"
    await sign_up(capped, inbox, email)
    code = await request_reset(capped, inbox, email)
    for _ in range(CAP):
        variables = {"c": other_code(code), "n": NEW_PASSWORD}
        known = await capped.execute(RESET, {"e": email, **variables})
        unknown = await capped.execute(RESET, {"e": nobody, **variables})
        assert (
            error_of(known) == error_of(unknown) == ("BAD_USER_INPUT", WRONG_RESET_CODE, ["code"])
        )

    fresh = await request_reset(capped, inbox, email)
    for body in (
        await capped.execute(RESET, {"e": email, "c": fresh, "n": NEW_PASSWORD}),
        await capped.execute(RESET, {"e": nobody, "c": fresh, "n": NEW_PASSWORD}),
    ):
        assert_capped(body)
    assert await logs_in(capped, email, PASSWORD)
    assert not await logs_in(capped, email, NEW_PASSWORD)


# --- row-level security of code_failure ----------------------------------------------------------


async def test_code_failures_show_only_the_account_s_rows(settings: Settings) -> None:
    """The app role sees and adds the failures of the account whose hash it scoped, sees and
    deletes anyone's failures past the window, and changes nothing else."""
    async with sql.connect(settings) as conn:  # the superuser, past the policies
        for account, age in (("acct-a", "1 hour"), ("acct-b", "1 hour"), ("acct-b", "25 hours")):
            await conn.execute(
                "INSERT INTO code_failure (id, account_hash, purpose, failed_at)"
                f" VALUES ($1, $2, 'verify', now() - interval '{age}')",
                uuid.uuid4(),
                account,
            )
    db = Database(str(settings.database_url))
    try:
        query = "SELECT account_hash, failed_at > now() - interval '1 day' FROM code_failure"
        async with db.driver_transaction() as conn:
            assert {tuple(r) for r in await conn.fetch(query)} == {("acct-b", False)}
        async with db.driver_transaction(lookup_hash="acct-a") as conn:
            assert {tuple(r) for r in await conn.fetch(query)} == {
                ("acct-a", True),
                ("acct-b", False),
            }
            # Another account's fresh rows stay; the old one goes.
            assert await conn.execute("DELETE FROM code_failure") == "DELETE 1"
            await conn.execute(
                "INSERT INTO code_failure (id, account_hash, purpose) VALUES ($1, 'acct-a', 'x')",
                uuid.uuid4(),
            )
        refused = {
            "row-level security": "INSERT INTO code_failure (id, account_hash, purpose)"
            " VALUES (gen_random_uuid(), 'acct-b', 'x')",
            "permission denied": "UPDATE code_failure SET purpose = 'reset'",  # no grant
        }
        for reason, statement in refused.items():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=reason):
                async with db.driver_transaction(lookup_hash="acct-a") as conn:
                    await conn.execute(statement)
    finally:
        await db.dispose()
    async with sql.connect(settings) as conn:
        rows = await conn.fetch("SELECT account_hash, purpose FROM code_failure")
    assert sorted(tuple(r) for r in rows) == [
        ("acct-a", "verify"),
        ("acct-a", "x"),
        ("acct-b", "verify"),
    ]
