"""Direct SQL on a test's database with asyncpg: what the API stored, seen from outside it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import make_url

from rag_gql.config import Settings


def asyncpg_dsn(settings: Settings) -> str:
    """The settings' database URL as asyncpg wants it (`postgresql://`, not `+asyncpg`)."""
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to the test's database, closed on exit."""
    conn = await asyncpg.connect(asyncpg_dsn(settings))
    try:
        yield conn
    finally:
        await conn.close()


async def stored_counts(settings: Settings) -> tuple[int, int]:
    """Rows in `document` and in `chunk`."""
    async with connect(settings) as conn:
        documents: int = await conn.fetchval("SELECT count(*) FROM document")
        chunks: int = await conn.fetchval("SELECT count(*) FROM chunk")
        return documents, chunks


async def workspace_of(settings: Settings, email: str) -> uuid.UUID:
    """The workspace the user with `email` is a member of (their personal one, in most tests)."""
    async with connect(settings) as conn:
        ws: uuid.UUID = await conn.fetchval(
            'SELECT m.workspace_id FROM membership m JOIN "user" u ON u.id = m.user_id '
            "WHERE u.email = $1",
            email,
        )
    return ws
