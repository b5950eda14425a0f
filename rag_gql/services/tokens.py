"""The stored form of a random bearer secret: refresh tokens, invitation tokens, API keys."""

from __future__ import annotations

import hashlib


def token_hash(token: str) -> str:
    """Returns the SHA-256 hex digest (64 characters) of `token`'s UTF-8 bytes.

    A fast hash is enough here, unlike for passwords: the secrets it is used for carry at least
    256 random bits, so nobody can find one from its hash by guessing. The database keeps only
    this digest, and a lookup hashes the presented secret the same way.
    """
    return hashlib.sha256(token.encode()).hexdigest()
