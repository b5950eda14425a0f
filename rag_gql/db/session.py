"""Engine and units of work.

`Database.transaction(workspace_id)` is the one way code touches tables: one transaction that
commits on success and rolls back on any exception, with the tenant set transaction-locally
(`set_config('app.workspace_id', ..., true)`, safe with pooled connections) for the row-level
security policies of the workspaces issue.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from rag_gql.errors import ServerBusy

APP_ROLE = "rag_gql_app"
"""The role the application's queries run as (created by migration 0002)."""


def normalize_url(url: str) -> str:
    """Returns a SQLAlchemy asyncpg URL for any PostgreSQL URL.

    Accepts `postgres://`, `postgresql://`, `postgresql+psycopg://` and `postgresql+asyncpg://`,
    including Unix-socket URLs such as `postgresql://user@/db?host=/run/postgresql`.

    Raises:
        ValueError: when the URL is not a PostgreSQL URL.
    """
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


class Database:
    """An async engine and its session factory; one per process, built in the app's lifespan.

    The pool keeps `pool_size` connections, opens up to `max_overflow` more under load, and
    a unit of work that waits `pool_timeout` seconds for one raises `ServerBusy`.
    """

    def __init__(
        self,
        url: str,
        *,
        role: str | None = APP_ROLE,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        echo: bool = False,
    ) -> None:
        self.url = normalize_url(url)
        self.pool_timeout = pool_timeout
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,
            echo=echo,
        )
        if role is not None:
            # Every pooled connection acts as the application role, which owns no table and
            # cannot bypass row-level security; the URL's user only needs to be its member.
            statement = f'SET ROLE "{role}"'

            @event.listens_for(self.engine.sync_engine, "connect")
            def _set_role(dbapi_connection: Any, _record: object) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute(statement)
                cursor.close()

        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(
        self, workspace_id: uuid.UUID | None = None
    ) -> AsyncIterator[AsyncSession]:
        """Yields a session inside one transaction, scoped to `workspace_id` when given.

        Commits when the block exits normally, rolls back when it raises. Never hold it across
        an Ollama call or a `yield` to a client.

        Raises:
            ServerBusy: no pooled connection came free in `pool_timeout` seconds.
        """
        try:
            async with self._sessions() as session, session.begin():
                if workspace_id is not None:
                    await session.execute(
                        text("SELECT set_config('app.workspace_id', :ws, true)"),
                        {"ws": str(workspace_id)},
                    )
                yield session
        except PoolTimeout as exc:
            raise ServerBusy(
                "The server is at capacity: no database connection came free in "
                f"{self.pool_timeout:g} s. Retry shortly.",
                retry_after=1,
            ) from exc

    async def dispose(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()
