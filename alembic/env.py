"""Alembic environment: async engine (asyncpg), URL from the caller or from Settings."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from rag_gql.config import Settings
from rag_gql.db.models import Base
from rag_gql.db.session import normalize_url

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 0x7261675F67716C  # "rag_gql": the advisory lock key of migrations


def _url() -> str:
    url = config.attributes.get("url") or Settings().database_url
    if not url:
        raise SystemExit("Set DATABASE_URL to the PostgreSQL server to migrate.")
    return normalize_url(str(url))


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        # Processes that start together (API replicas, workers) migrate one at a time: the
        # first applies the revisions, the others wait here and then find the database at
        # head. The lock ends with the transaction, which holds every revision.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
