"""Accounts: registration with an emailed code, login, sessions, password change and reset.

Passwords follow `rag_gql.services.passwords` (policy, Argon2id). One-time codes are 6 digits,
stored as an HMAC-SHA256 keyed by an HKDF key (RFC 5869) of the server secret (a plain hash of
a 6-digit code could be reversed by trying all million), expire after `OTP_TTL` seconds and die
after `OTP_MAX_ATTEMPTS` wrong tries. Across codes, an email may fail `OTP_DAILY_MAX_ATTEMPTS` times
per purpose (verification, reset) in 24 hours; then every code is refused until the oldest
failure is a day old. Failures are counted in the database by an HMAC of the email, for
addresses with and without an account alike, so the cap answers the same for both.

Registration resists pre-hijacking (Sudhodanan and Paverd, "Pre-hijacked accounts",
USENIX Security 2022): the password that opens an account is the one given to `verify_email`
with the emailed code, by whoever reads the mailbox; `register` checks its password against
the policy and stores none, so nothing a stranger registered with survives verification.
`register` answers the same whether or not the address has an account: a verified one gets a
notice by mail instead of a code.

A login opens a session: a short-lived access token, a JWT (RFC 7519) signed HS256 with
`joserfc` carrying `sub`, `iat`, `exp` and `ver` (the user's `token_version`), and an opaque
refresh token stored as its SHA-256. Refresh tokens rotate: each is good for one refresh, and
presenting one again revokes every token of its family, the session, since either the client
or a thief holds a stolen copy (OAuth 2.0 Security BCP, RFC 9700 4.14.2). Changing or
resetting the password bumps `token_version` and revokes every refresh token: all sessions end.

The endpoints that take a password or a code, or send mail, are rate limited per client IP
and per email (`rag_gql.services.rate_limits`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from email_validator import EmailNotValidError, validate_email
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import User
from rag_gql.db.session import scope
from rag_gql.errors import (
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from rag_gql.providers.mail import Mailer
from rag_gql.repositories import refresh_tokens, users, workspaces
from rag_gql.services.access import Principal
from rag_gql.services.passwords import Passwords
from rag_gql.services.rate_limits import RateLimiter
from rag_gql.services.tokens import token_hash

log = logging.getLogger(__name__)

OTP_KEY_INFO = b"rag-gql otp v1"
"""HKDF `info` (RFC 5869) of the one-time codes' HMAC key, derived from the JWT secret."""
_VERIFY = "verify"
_RESET = "reset"
WRONG_CODE = "The code is wrong or has expired; register again for a new one"
WRONG_RESET_CODE = "The code is wrong or has expired; request a new one"
INVALID_REFRESH = "The refresh token is invalid; log in again"
TOO_MANY_CODES = "Too many wrong codes for this email in 24 hours; try again later"
UNUSABLE_HASH = "!"
"""The password hash of an account not verified yet: no password matches it."""
_NOTICE = "notice"
_MAILS = {  # purpose: (subject, body)
    _VERIFY: (
        "Your rag-gql verification code",
        "Your verification code is {code}.\n\nIt expires in {minutes} minutes.",
    ),
    _RESET: (
        "Your rag-gql password reset code",
        "Your password reset code is {code}.\n\nIt expires in {minutes} minutes.\n\n"
        "If you did not ask for it, ignore this email: your password stays as it is.",
    ),
    _NOTICE: (
        "Someone tried to register with your rag-gql address",
        "Someone tried to register a new rag-gql account with this email address, which "
        "already has one.\n\nIf it was you, log in, or reset your password if you forgot it. "
        "If not, you can ignore this email: your account is unchanged.",
    ),
}


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A signed JWT; `expires_in` in seconds."""

    access_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 scheme name, not a secret


@dataclass(frozen=True, slots=True)
class Tokens:
    """A session's credentials: an access token and the refresh token that renews it once."""

    access: AccessToken
    refresh_token: str
    refresh_expires_in: int
    """Seconds until `refresh_token` expires."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A registration awaiting its code."""

    email: str
    code_expires_at: datetime


class _Code(enum.Enum):
    """What checking a one-time code found."""

    RIGHT = "right"
    WRONG = "wrong"  # counted as an attempt
    DEAD = "dead"  # none, or expired
    EXHAUSTED = "exhausted"  # OTP_MAX_ATTEMPTS wrong tries already


class AuthService:
    """Accounts, sessions (access and refresh tokens) and password changes."""

    def __init__(
        self, *, settings: Settings, db: Database, mailer: Mailer, ratelimiter: RateLimiter
    ) -> None:
        self._settings = settings
        self._db = db
        self._mailer = mailer
        self._limiter = ratelimiter
        self._passwords = Passwords(settings.password_hash_profile)
        secret = settings.resolved_jwt_secret()
        self._jwk = OctKey.import_key(secret)
        # The codes' HMAC key is derived from the signing secret (HKDF, RFC 5869) rather than
        # the secret itself: one key per purpose, and no code hash made with the JWT key.
        self._otp_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=OTP_KEY_INFO
        ).derive(secret)
        self._mail_tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Waits for the emails still being sent in the background."""
        await asyncio.gather(*self._mail_tasks, return_exceptions=True)

    # --- registration --------------------------------------------------------------------------

    async def register(
        self, email: str, password: str, *, client_ip: str | None = None
    ) -> Registration:
        """Starts a registration: emails a 6-digit code that `verify_email` takes.

        `password` is only checked against the policy, so a client learns early that it
        will be refused; it is not stored. The account gets its password at `verify_email`,
        from whoever has the code: a stranger who registers someone else's address first
        cannot choose the password it opens with. Registering again for an unverified
        address mails a new code (the old one dies).

        For an address that already has a verified account the answer is the same, shape
        and fields, and the owner is mailed a notice instead of a code; nothing is stored.

        Raises:
            RateLimited: too many attempts from this IP or for this email.
            InvalidInput: malformed email, or a password the policy refuses.
            UpstreamUnavailable: the mail could not be sent (registering again resends).
        """
        await self._limit("register", client_ip, email)
        email = normalize_email(email)
        await self._passwords.check(password, email=email)
        async with self._db.transaction() as session:
            user = await users.get_by_email(session, email)
            if user is not None and user.verified_at is not None:
                code = None
                expires_at = datetime.now(UTC) + timedelta(seconds=self._settings.otp_ttl)
            else:
                if user is None:
                    user = await users.add(session, email=email, password_hash=UNUSABLE_HASH)
                code, expires_at = await self._new_code(session, user.id, _VERIFY)
        if code is None:
            await self._mailer.send(**self._notice_mail(email))
        else:
            await self._mailer.send(**self._code_mail(email, code, _VERIFY))
        return Registration(email=email, code_expires_at=expires_at)

    async def verify_email(
        self, email: str, code: str, password: str, *, client_ip: str | None = None
    ) -> User:
        """Activates the account when `code` is its live code, with `password` as its
        password, and creates its personal workspace.

        The password is set here, not at `register`, so it is chosen by whoever reads the
        mailbox (against pre-hijacking, see the module). A password the policy refuses is
        refused before the code is looked at, and costs no attempt.

        Raises:
            RateLimited: too many attempts from this IP or for this email, or
                `OTP_DAILY_MAX_ATTEMPTS` failed codes for this email in 24 hours (for any
                email, with or without an account; even the right code is refused then).
            InvalidInput: a malformed email, a password the policy refuses, or a wrong,
                expired or exhausted code, an unknown email or an account already verified
                (one message for these).
        """
        await self._limit("verifyEmail", client_ip, email)
        email = normalize_email(email)
        await self._passwords.check(password, email=email)
        async with self._db.transaction() as session:
            user, found = await self._attempt(session, email, _VERIFY, code, verified=False)
            if user is not None and found is _Code.RIGHT:
                user.password_hash = await self._passwords.hash(password)
                user.verified_at = datetime.now(UTC)
                await workspaces.create_personal_workspace(session, user)
        # Raised after the commit, so the failed attempt stays counted.
        if user is None or found is not _Code.RIGHT:
            raise InvalidInput(WRONG_CODE)
        return user

    # --- sessions ------------------------------------------------------------------------------

    async def login(self, email: str, password: str, *, client_ip: str | None = None) -> Tokens:
        """Checks the password and opens a session.

        Raises:
            RateLimited: too many attempts from this IP or for this email.
            Unauthenticated: wrong email or password, or an unverified account (which has no
                password yet; one message for these).
        """
        await self._limit("login", client_ip, email)
        try:
            email = normalize_email(email)
        except InvalidInput:
            email = ""
        async with self._db.transaction() as session:
            user = await users.get_by_email(session, email) if email else None
            if user is not None and user.verified_at is None:
                user = None  # no password yet: checked against the dummy hash, at the same cost
            ok = await self._passwords.verify(user.password_hash if user else None, password)
            if user is None or not ok:
                raise Unauthenticated("Wrong email or password")
            if self._passwords.needs_rehash(user.password_hash):
                user.password_hash = await self._passwords.hash(password)
            return await self._open_session(session, user, family_id=uuid.uuid4())

    async def refresh(self, refresh_token: str) -> Tokens:
        """Exchanges a live refresh token for a new session; the old one is used up.

        Presenting a used or revoked token revokes its whole family (reuse detection,
        RFC 9700 4.14.2). The row is locked, so of two concurrent refreshes with one token,
        the second sees it used.

        Raises:
            Unauthenticated: unknown, used, revoked or expired token, or the account is gone.
        """
        now = datetime.now(UTC)
        async with self._db.transaction() as session:
            stored = await refresh_tokens.get_by_hash(
                session, token_hash(refresh_token), for_update=True
            )
            if stored is None:
                raise Unauthenticated(INVALID_REFRESH)
            await scope(session, user_id=stored.user_id)  # the token's session: its user's
            if stored.used_at is None and stored.revoked_at is None:
                if stored.expires_at <= now:
                    raise Unauthenticated("The refresh token has expired; log in again")
                user = await users.get(session, stored.user_id)
                if user is None or user.verified_at is None:
                    raise Unauthenticated(INVALID_REFRESH)
                stored.used_at = now
                return await self._open_session(session, user, family_id=stored.family_id)
            # Reused: revoke the family, commit, then refuse.
            await refresh_tokens.revoke_family(session, stored.family_id, now=now)
        log.warning("refresh token reused; its family %s is revoked", stored.family_id)
        raise Unauthenticated(INVALID_REFRESH)

    async def logout(self, refresh_token: str) -> None:
        """Ends the session of `refresh_token` (revokes its family); unknown tokens are ignored.

        Access tokens already issued stay valid until they expire (`ACCESS_TOKEN_TTL`).
        """
        async with self._db.transaction() as session:
            stored = await refresh_tokens.get_by_hash(session, token_hash(refresh_token))
            if stored is not None:
                await scope(session, user_id=stored.user_id)
                await refresh_tokens.revoke_family(session, stored.family_id, now=datetime.now(UTC))

    def issue_token(self, user: User) -> AccessToken:
        """Signs an access token for `user`, valid for `ACCESS_TOKEN_TTL` seconds.

        Its `ver` claim is the user's `token_version`: bumping that revokes the token.
        """
        now = int(time.time())
        ttl = self._settings.access_token_ttl
        claims = {"sub": str(user.id), "iat": now, "exp": now + ttl, "ver": user.token_version}
        token = jwt.encode({"alg": "HS256"}, claims, self._jwk)
        return AccessToken(access_token=token, expires_in=ttl)

    async def authenticate(self, token: str, workspace_id: uuid.UUID | None = None) -> Principal:
        """Returns the principal for a bearer access token, acting in `workspace_id`.

        Without `workspace_id`, the user's personal workspace.

        Raises:
            Unauthenticated: malformed, forged, expired or revoked token, or the account is gone.
            NotFound: the user is not a member of `workspace_id` (or it does not exist).
        """
        try:
            decoded = jwt.decode(token, self._jwk, algorithms=["HS256"])
            jwt.JWTClaimsRegistry(
                exp={"essential": True}, sub={"essential": True}, iat={"essential": True}
            ).validate(decoded.claims)
            user_id = uuid.UUID(str(decoded.claims["sub"]))
            version = int(decoded.claims.get("ver", 0))
        except ExpiredTokenError as exc:
            raise Unauthenticated("The access token has expired; log in again") from exc
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated("The access token is invalid") from exc
        async with self._db.driver_transaction(user_id=user_id) as conn:
            found = await workspaces.caller(conn, user_id=user_id, workspace_id=workspace_id)
        if found is None or not found.verified or found.token_version != version:
            raise Unauthenticated("The access token is invalid")
        if found.workspace_id is None or found.role is None:
            if workspace_id is None:  # no personal workspace
                raise Unauthenticated("The access token is invalid")
            raise NotFound("Workspace not found")
        return Principal(
            workspace_id=found.workspace_id,
            role=found.role,
            user_id=found.user_id,
            email=found.email,
        )

    async def current_user(self, principal: Principal) -> User:
        """Returns the calling user.

        Raises:
            Forbidden: the caller is an API key, not a user.
            Unauthenticated: the account is gone.
        """
        if principal.user_id is None:
            raise Forbidden("An API key has no user; `me` needs a user's access token")
        async with self._db.transaction() as session:
            user = await users.get(session, principal.user_id)
        if user is None:
            raise Unauthenticated("The access token is invalid")
        return user

    # --- passwords -----------------------------------------------------------------------------

    async def change_password(
        self,
        principal: Principal,
        current_password: str,
        new_password: str,
        *,
        client_ip: str | None = None,
    ) -> None:
        """Replaces the caller's password and ends all their sessions (this one too).

        Raises:
            Forbidden: the caller is an API key, not a user.
            RateLimited: too many attempts from this IP or for this account.
            InvalidInput: the new password breaks the policy.
            Unauthenticated: `current_password` is wrong, or the account is gone.
        """
        if principal.user_id is None:
            raise Forbidden("An API key has no password; use a user's access token")
        await self._limit("changePassword", client_ip, principal.email)
        await self._passwords.check(new_password, email=principal.email)
        new_hash = await self._passwords.hash(new_password)
        async with self._db.transaction() as session:
            user = await users.get(session, principal.user_id, for_update=True)
            if user is None:
                raise Unauthenticated("The access token is invalid")
            if not await self._passwords.verify(user.password_hash, current_password):
                raise Unauthenticated("The current password is wrong")
            user.password_hash = new_hash
            await self._end_all_sessions(session, user)

    async def request_password_reset(self, email: str, *, client_ip: str | None = None) -> None:
        """Emails a 6-digit reset code when a verified account has this email.

        Says nothing either way: the answer, and its time, are the same for any email (the
        mail goes out in the background, and a failure to send it is only logged).

        Raises:
            RateLimited: too many attempts from this IP or for this email.
            InvalidInput: a malformed email.
        """
        await self._limit("requestPasswordReset", client_ip, email)
        email = normalize_email(email)
        async with self._db.transaction() as session:
            user = await users.get_by_email(session, email)
            if user is None or user.verified_at is None:
                return
            code, _ = await self._new_code(session, user.id, _RESET)
        task = asyncio.create_task(
            self._send_quietly(user.id, self._code_mail(email, code, _RESET))
        )
        self._mail_tasks.add(task)
        task.add_done_callback(self._mail_tasks.discard)

    async def reset_password(
        self, email: str, code: str, new_password: str, *, client_ip: str | None = None
    ) -> None:
        """Sets a new password with an emailed reset code, and ends all sessions.

        Raises:
            RateLimited: too many attempts from this IP or for this email, or
                `OTP_DAILY_MAX_ATTEMPTS` failed codes for this email in 24 hours (for any
                email, with or without an account; even the right code is refused then).
            InvalidInput: a malformed email, a new password the policy refuses, or a wrong,
                expired or exhausted code or unknown email (one message for these).
        """
        await self._limit("resetPassword", client_ip, email)
        email = normalize_email(email)
        await self._passwords.check(new_password, email=email)
        async with self._db.transaction() as session:
            user, found = await self._attempt(session, email, _RESET, code, verified=True)
            if user is not None and found is _Code.RIGHT:
                user.password_hash = await self._passwords.hash(new_password)
                await self._end_all_sessions(session, user)
        # Raised after the commit, so the failed attempt stays counted.
        if user is None or found is not _Code.RIGHT:
            raise InvalidInput(WRONG_RESET_CODE)

    # --- helpers -------------------------------------------------------------------------------

    async def _limit(self, action: str, client_ip: str | None, email: str | None) -> None:
        account: str | None = None
        if email:
            try:
                account = normalize_email(email)
            except InvalidInput:
                account = None  # cannot be an account; the IP limit still counts
        await self._limiter.hit(action, client_ip=client_ip, account=account)

    async def _open_session(
        self, session: AsyncSession, user: User, *, family_id: uuid.UUID
    ) -> Tokens:
        await scope(session, user_id=user.id)  # authenticated: the session acts for the user
        token = secrets.token_urlsafe(32)
        ttl = self._settings.refresh_token_ttl
        await refresh_tokens.add(
            session,
            user_id=user.id,
            family_id=family_id,
            token_hash=token_hash(token),
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        )
        return Tokens(access=self.issue_token(user), refresh_token=token, refresh_expires_in=ttl)

    async def _end_all_sessions(self, session: AsyncSession, user: User) -> None:
        user.token_version += 1
        await scope(session, user_id=user.id)
        await refresh_tokens.revoke_all(session, user.id, now=datetime.now(UTC))

    async def _new_code(
        self, session: AsyncSession, user_id: uuid.UUID, purpose: str
    ) -> tuple[str, datetime]:
        """Stores a new code for `purpose` (replacing any other); returns it and its expiry."""
        code = f"{secrets.randbelow(1_000_000):06d}"
        expires_at = datetime.now(UTC) + timedelta(seconds=self._settings.otp_ttl)
        await users.replace_code(
            session,
            user_id=user_id,
            purpose=purpose,
            code_hash=self._code_hash(code),
            expires_at=expires_at,
        )
        return code, expires_at

    async def _attempt(
        self, session: AsyncSession, email: str, purpose: str, code: str, *, verified: bool
    ) -> tuple[User | None, _Code]:
        """Checks `code` for the account of `email` whose `verified` state fits `purpose`
        (locked), after the daily cap; any outcome but RIGHT is recorded as a failure of
        `email`, known or not (the caller must commit before raising).

        Raises:
            RateLimited: `OTP_DAILY_MAX_ATTEMPTS` failures of `email` for `purpose` in 24 hours.
        """
        now = datetime.now(UTC)
        key = self._account_hash(email)
        await scope(session, lookup_hash=key)
        await users.lock_failures(session, account_hash=key)
        failures, oldest = await users.recent_failures(
            session, account_hash=key, purpose=purpose, now=now
        )
        if failures >= self._settings.otp_daily_max_attempts and oldest is not None:
            retry_after = math.ceil((oldest + users.FAILURE_WINDOW - now).total_seconds())
            raise RateLimited(TOO_MANY_CODES, retry_after=retry_after)
        user = await users.get_by_email(session, email)
        found = _Code.DEAD
        if user is not None and (user.verified_at is not None) == verified:
            found = await self._use_code(session, user.id, purpose, code)
        if found is not _Code.RIGHT:
            await users.add_failure(session, account_hash=key, purpose=purpose, now=now)
        return user, found

    def _account_hash(self, email: str) -> str:
        # Under the OTP key: `code_failure` names no address, and nobody can tell whose rows
        # are whose without the key. "@" keeps it apart from any 6-digit code's HMAC.
        return self._code_hash(f"account@{email}")

    async def _use_code(
        self, session: AsyncSession, user_id: uuid.UUID, purpose: str, code: str
    ) -> _Code:
        """Checks `code` against the live code for `purpose`: a right one is deleted, a wrong
        one counted (the caller must commit before raising)."""
        stored = await users.get_code(session, user_id=user_id, purpose=purpose)
        if stored is None or stored.expires_at <= datetime.now(UTC):
            return _Code.DEAD
        if stored.attempts >= self._settings.otp_max_attempts:
            return _Code.EXHAUSTED
        if not hmac.compare_digest(stored.code_hash, self._code_hash(code.strip())):
            stored.attempts += 1
            return _Code.WRONG
        await users.delete_codes(session, user_id=user_id, purpose=purpose)
        return _Code.RIGHT

    def _notice_mail(self, email: str) -> dict[str, str]:
        subject, body = _MAILS[_NOTICE]
        return {"to": email, "subject": subject, "body": body}

    def _code_mail(self, email: str, code: str, purpose: str) -> dict[str, str]:
        subject, body = _MAILS[purpose]
        minutes = max(1, self._settings.otp_ttl // 60)
        return {"to": email, "subject": subject, "body": body.format(code=code, minutes=minutes)}

    async def _send_quietly(self, user_id: uuid.UUID, mail: dict[str, str]) -> None:
        try:
            await self._mailer.send(**mail)
        except DomainError as exc:
            log.warning("reset code for user %s not sent: %s", user_id, exc)

    def _code_hash(self, code: str) -> str:
        return hmac.new(self._otp_key, code.encode(), hashlib.sha256).hexdigest()


def normalize_email(email: str) -> str:
    """Returns the email lower-cased and normalized.

    Raises:
        InvalidInput: when it is not a valid address.
    """
    try:
        valid = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"Invalid email address: {exc}") from exc
    return valid.normalized.lower()
