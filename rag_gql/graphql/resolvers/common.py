"""Small helpers shared by resolvers."""

from __future__ import annotations

import uuid

import strawberry

from rag_gql.errors import NotFound


def parse_id(value: strawberry.ID, what: str) -> uuid.UUID:
    """Parses an opaque id; a malformed one is simply "<what> not found"."""
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise NotFound(f"{what} not found") from exc
