"""Accounts: registration with an emailed one-time code, login, and access tokens.

Passwords are hashed with Argon2id (`argon2-cffi`, RFC 9106 defaults). One-time codes are
6 digits, stored as an HMAC-SHA256 keyed by the server secret (a plain hash of a 6-digit code
could be reversed by trying all million), expire after `OTP_TTL` seconds and die after
`OTP_MAX_ATTEMPTS` wrong tries. Access tokens are JWTs (RFC 7519) signed HS256 with
`joserfc`, carrying `sub`, `iat`, `exp`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import argon2.profiles
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import User
from rag_gql.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from rag_gql.providers.mail import Mailer
from rag_gql.repositories import users, workspaces
from rag_gql.services.access import Principal

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
_VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A signed JWT; `expires_in` in seconds."""

    access_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 scheme name, not a secret


@dataclass(frozen=True, slots=True)
class Registration:
    """A registration awaiting its code."""

    email: str
    code_expires_at: datetime


class AuthService:
    """Registration, email verification, login and token checks."""

    def __init__(self, *, settings: Settings, db: Database, mailer: Mailer) -> None:
        self._settings = settings
        self._db = db
        self._mailer = mailer
        self._hasher = PasswordHasher.from_parameters(
            getattr(argon2.profiles, settings.password_hash_profile)
        )
        self._secret = settings.resolved_jwt_secret()
        self._jwk = OctKey.import_key(self._secret)
        # Verified against when the email is unknown, so both paths cost one Argon2 check
        # and timing does not tell which emails have accounts.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def register(self, email: str, password: str) -> Registration:
        """Creates (or refreshes) an unverified account and emails it a 6-digit code.

        Raises:
            InvalidInput: malformed email, or a password outside 8..1024 characters.
            Conflict: a verified account already has this email.
            UpstreamUnavailable: the code could not be emailed (registering again resends).
        """
        email = normalize_email(email)
        check_password(password)
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        code = f"{secrets.randbelow(1_000_000):06d}"
        expires_at = datetime.now(UTC) + timedelta(seconds=self._settings.otp_ttl)
        async with self._db.transaction() as session:
            user = await users.get_by_email(session, email)
            if user is not None and user.verified_at is not None:
                raise Conflict("An account with this email already exists; log in instead")
            if user is None:
                user = await users.add(session, email=email, password_hash=password_hash)
            else:
                user.password_hash = password_hash
            await users.replace_code(
                session,
                user_id=user.id,
                purpose=_VERIFY,
                code_hash=self._code_hash(code),
                expires_at=expires_at,
            )
        minutes = max(1, self._settings.otp_ttl // 60)
        await self._mailer.send(
            to=email,
            subject="Your rag-gql verification code",
            body=f"Your verification code is {code}.\n\nIt expires in {minutes} minutes.",
        )
        return Registration(email=email, code_expires_at=expires_at)

    async def verify_email(self, email: str, code: str) -> User:
        """Activates the account when `code` is its live code; creates its personal workspace.

        Raises:
            InvalidInput: wrong, expired or exhausted code, unknown email, or an account
                already verified (one message).
        """
        email = normalize_email(email)
        code = code.strip()
        wrong = InvalidInput("The code is wrong or has expired")
        async with self._db.transaction() as session:
            user = await users.get_by_email(session, email)
            # A verified account has no live code: any code is wrong (and must not reveal its id).
            if user is None or user.verified_at is not None:
                raise wrong
            stored = await users.get_code(session, user_id=user.id, purpose=_VERIFY)
            if stored is None or stored.expires_at <= datetime.now(UTC):
                raise wrong
            if stored.attempts >= self._settings.otp_max_attempts:
                raise InvalidInput("Too many wrong codes; register again to get a new one")
            if not hmac.compare_digest(stored.code_hash, self._code_hash(code)):
                # Counted in a committed transaction: the error is raised after it.
                stored.attempts += 1
                failed = True
            else:
                failed = False
                user.verified_at = datetime.now(UTC)
                await users.delete_codes(session, user_id=user.id, purpose=_VERIFY)
                await workspaces.create_personal_workspace(session, user)
        if failed:
            raise wrong
        return user

    async def login(self, email: str, password: str) -> AccessToken:
        """Checks the password and returns an access token.

        Raises:
            Unauthenticated: wrong email or password, or an unverified account.
        """
        try:
            email = normalize_email(email)
        except InvalidInput:
            email = ""
        async with self._db.transaction() as session:
            user = await users.get_by_email(session, email) if email else None
            stored_hash = user.password_hash if user is not None else self._dummy_hash
            ok = await asyncio.to_thread(self._verify_password, stored_hash, password)
            if user is None or not ok:
                raise Unauthenticated("Wrong email or password")
            if user.verified_at is None:
                raise Unauthenticated("Verify your email before logging in")
            if self._hasher.check_needs_rehash(user.password_hash):
                user.password_hash = await asyncio.to_thread(self._hasher.hash, password)
            return self.issue_token(user)

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
            Unauthenticated: malformed, forged or expired token, or the account is gone.
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
        async with self._db.transaction() as session:
            user = await users.get(session, user_id)
            if user is None or user.verified_at is None or user.token_version != version:
                raise Unauthenticated("The access token is invalid")
            if workspace_id is None:
                workspace_id = await workspaces.personal_workspace_id(session, user_id)
                if workspace_id is None:
                    raise Unauthenticated("The access token is invalid")
            role = await workspaces.member_role(session, workspace_id=workspace_id, user_id=user_id)
        if role is None:
            raise NotFound("Workspace not found")
        return Principal(workspace_id=workspace_id, role=role, user_id=user.id, email=user.email)

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

    def _verify_password(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _code_hash(self, code: str) -> str:
        return hmac.new(self._secret, code.encode(), hashlib.sha256).hexdigest()


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


def check_password(password: str) -> None:
    """Raises `InvalidInput` unless the password has 8 to 1024 characters."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"The password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"The password must have at most {MAX_PASSWORD_LENGTH} characters")
