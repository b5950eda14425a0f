"""What the database says about its own schema: the embedding column's dimension, the applied
migrations. Read at start-up and by `/readyz`; no tenant data."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


async def embedding_dimension(session: AsyncSession) -> int:
    """The dimension of `chunk.embedding` (`vector(n)`: its type modifier is n)."""
    query = text(
        "SELECT atttypmod FROM pg_attribute "
        "WHERE attrelid = 'chunk'::regclass AND attname = 'embedding'"
    )
    return int((await session.execute(query)).scalar_one())


async def applied_migrations(session: AsyncSession) -> list[str]:
    """The alembic revisions the database is at (`alembic_version`), sorted."""
    rows = await session.execute(text("SELECT version_num FROM alembic_version"))
    return sorted(str(row[0]) for row in rows)
