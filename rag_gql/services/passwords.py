"""Passwords: the policy a new one must meet, and Argon2id hashing.

Policy: 8 to 1024 characters, and not easy to guess. Guessability is estimated by `zxcvbn`
(Wheeler, "zxcvbn: Low-Budget Password Strength Estimation", USENIX Security 2016), which
does what NIST SP 800-63B 5.1.1.2 asks: compare against common passwords and
context-specific words. The email and its local part are given as those words, so
`ada@example.com` cannot pick `ada12345`.

Hashes are Argon2id (`argon2-cffi`, RFC 9106 parameter profiles), computed in a worker thread.
"""

from __future__ import annotations

import asyncio
import secrets

import argon2.profiles
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from rag_gql.errors import InvalidInput

MIN_LENGTH = 8
MAX_LENGTH = 1024
MIN_SCORE = 2
"""zxcvbn scores 0..4; 2 is "somewhat guessable: protection from unthrottled online attacks"."""
SCORED_LENGTH = 72
"""zxcvbn's own input cap: its matching grows fast with length, and a longer password is at
least as strong as its first 72 characters."""


def check_password(password: str, *, email: str | None = None) -> None:
    """Accepts a password of 8..1024 characters that zxcvbn scores at least 2.

    CPU-bound (up to ~0.1 s for long inputs): async code calls `Passwords.check`.

    Raises:
        InvalidInput: too short, too long, or too easy to guess (the message carries
            zxcvbn's warning and suggestions).
    """
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"The password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"The password must have at most {MAX_LENGTH} characters")
    user_inputs = [email, email.partition("@")[0]] if email else []
    result = zxcvbn(password[:SCORED_LENGTH], user_inputs=user_inputs)
    if result["score"] >= MIN_SCORE:
        return
    feedback = result["feedback"]
    hints = [feedback["warning"], *feedback["suggestions"]]
    advice = " ".join(str(hint) for hint in hints if hint)
    message = "The password is too easy to guess"
    raise InvalidInput(f"{message}. {advice}" if advice else message)


class Passwords:
    """Checks new passwords against the policy, hashes and verifies them off the event loop."""

    def __init__(self, profile: str) -> None:
        """`profile` names an `argon2.profiles` constant, like `RFC_9106_LOW_MEMORY`."""
        self._hasher = PasswordHasher.from_parameters(getattr(argon2.profiles, profile))
        # Verified against when there is no account, so both paths cost one Argon2 check
        # and timing does not tell which emails have accounts.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def check(self, password: str, *, email: str | None) -> None:
        """`check_password` in a worker thread.

        Raises:
            InvalidInput: the password breaks the policy.
        """
        await asyncio.to_thread(check_password, password, email=email)

    async def hash(self, password: str) -> str:
        """The Argon2id hash of `password`, in PHC string format."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches `stored_hash`; None (no account) costs the same."""
        ok = await asyncio.to_thread(self._verify, stored_hash or self._dummy_hash, password)
        return ok and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when `stored_hash` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(stored_hash)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False
