"""Engine and units of work.

`Database.transaction(workspace_id, user_id=..., lookup_hash=...)` is the one way code touches
tables: one transaction that commits on success and rolls back on any exception, with its scope
set transaction-locally (`set_config(..., true)`, safe with pooled connections) for the
row-level security policies (migrations 0002, 0008 and 0009):

- `app.workspace_id`: the tenant; its documents, chunks, collections, memberships, API keys and
  invitations.
- `app.user_id`: the acting user; their memberships in any workspace, their refresh tokens.
- `app.lookup_hash`: the SHA-256 (hex) of a presented secret; the one API key, invitation or
  refresh token it belongs to. Or the HMAC of an email: that account's failed code attempts
  (migration 0009).

`scope(session, ...)` sets them inside a transaction already open, once a lookup has told whose
row it is. Request connections carry `statement_timeout`, `lock_timeout` and
`idle_in_transaction_session_timeout`; `Database.without_timeouts()` lifts them for the
ingestion worker's long transactions.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
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

SET_TENANT = "SELECT set_config('app.workspace_id', $1, true)"
"""Scopes the transaction to a workspace for the row-level security policies ($1: its id)."""

SCOPE_SETTINGS = {
    "workspace_id": "app.workspace_id",
    "user_id": "app.user_id",
    "lookup_hash": "app.lookup_hash",
}
"""`scope`'s keyword arguments and the settings the row-level security policies read."""

UNBOUNDED = {
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}
"""What `Database.without_timeouts()` sets in each of its transactions (0: no limit)."""

TIMED_OUT = {"57014": "DB_STATEMENT_TIMEOUT", "55P03": "DB_LOCK_TIMEOUT"}
"""SQLSTATEs of a statement cancelled by a timeout (query_canceled, lock_not_available), and
the setting that bounds it."""

PING_AFTER_IDLE_SECONDS = 10.0
"""A pooled connection idle longer than this is pinged before use (see `Database`)."""


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


def scope_statement(
    *, extra: dict[str, str] | None = None, **values: uuid.UUID | str | None
) -> tuple[str, tuple[str, ...]]:
    """One `SELECT set_config(..., true), ...` for the given `SCOPE_SETTINGS` (None: left
    as they are) and `extra` settings, with its `$n` arguments; ("", ()) when there is none.

    Raises:
        TypeError: a keyword that is not one of `SCOPE_SETTINGS`.
    """
    pairs = [(name, value) for name, value in (extra or {}).items()]
    for key, value in values.items():
        if key not in SCOPE_SETTINGS:
            raise TypeError(f"unknown scope {key!r}")
        if value is not None:
            pairs.append((SCOPE_SETTINGS[key], str(value)))
    if not pairs:
        return "", ()
    calls = ", ".join(f"set_config('{name}', ${i}, true)" for i, (name, _) in enumerate(pairs, 1))
    return f"SELECT {calls}", tuple(value for _, value in pairs)


async def scope(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    lookup_hash: str | None = None,
) -> None:
    """Sets the row-level security scope of the session's open transaction (None: unchanged),
    until it ends: what a lookup learnt (whose key, whose token, which new workspace)."""
    sql, args = scope_statement(workspace_id=workspace_id, user_id=user_id, lookup_hash=lookup_hash)
    if sql:
        connection = await session.connection()
        await connection.exec_driver_sql(sql, args)


def _milliseconds(seconds: float | None) -> str | None:
    return None if seconds is None else str(round(seconds * 1000))


class Database:
    """An async engine and its session factory; one per process, built in the app's lifespan.

    The pool keeps `pool_size` connections, opens up to `max_overflow` more under load, and
    a unit of work that waits `pool_timeout` seconds for one raises `ServerBusy`.

    `statement_timeout`, `lock_timeout` and `idle_in_transaction_timeout` (seconds; None or 0:
    no limit) are set on every connection it opens; a statement cancelled by one raises
    `ServerBusy` naming the setting, and a session idle in a transaction longer than its limit
    is closed by PostgreSQL. Bound parameters never appear in SQLAlchemy's error messages or
    logs (`hide_parameters`): they hold emails and hashes.

    Stale connections (PostgreSQL restarted, a proxy dropped them) are replaced at checkout:
    one whose socket has closed is discarded at no cost, and one idle longer than
    `PING_AFTER_IDLE_SECONDS` is pinged first (SQLAlchemy's "custom pessimistic ping" recipe,
    made idle-aware; `pool_pre_ping` would cost three round trips on every checkout).
    """

    def __init__(
        self,
        url: str,
        *,
        role: str | None = APP_ROLE,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        statement_timeout: float | None = None,
        lock_timeout: float | None = None,
        idle_in_transaction_timeout: float | None = None,
        echo: bool = False,
    ) -> None:
        self.url = normalize_url(url)
        self.pool_timeout = pool_timeout
        limits = {
            "statement_timeout": _milliseconds(statement_timeout),
            "lock_timeout": _milliseconds(lock_timeout),
            "idle_in_transaction_session_timeout": _milliseconds(idle_in_transaction_timeout),
        }
        server_settings = {name: value for name, value in limits.items() if value is not None}
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            echo=echo,
            hide_parameters=True,
            connect_args={"server_settings": server_settings} if server_settings else {},
        )
        _check_at_checkout(self.engine)
        if role is not None:
            # Every pooled connection acts as the application role, which owns no table and
            # cannot bypass row-level security; the URL's user only needs to be its member.
            statement = f'SET ROLE "{role}"'

            @event.listens_for(self.engine.sync_engine, "connect")
            def _set_role(dbapi_connection: Any, _record: object) -> None:
                # On the driver, outside any transaction (SQLAlchemy's "run_async" recipe for
                # pool events): through the DBAPI cursor, SQLAlchemy's adapter opens a
                # transaction that stays open until an ORM unit of work ends it, and a
                # `driver_transaction` on that connection would be a savepoint inside it.
                dbapi_connection.run_async(lambda driver: driver.execute(statement))

        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._local: dict[str, str] = {}

    def without_timeouts(self) -> Database:
        """The same engine and pool, its transactions free of the request timeouts: for the
        ingestion worker, whose transactions last as long as a document's embedding."""
        other = copy.copy(self)
        other._local = dict(UNBOUNDED)
        return other

    @asynccontextmanager
    async def transaction(
        self,
        workspace_id: uuid.UUID | None = None,
        *,
        user_id: uuid.UUID | None = None,
        lookup_hash: str | None = None,
    ) -> AsyncIterator[AsyncSession]:
        """Yields a session inside one transaction, scoped (see the module) to `workspace_id`,
        `user_id` and `lookup_hash` when given.

        Commits when the block exits normally, rolls back when it raises. Never hold it across
        an Ollama call or a `yield` to a client.

        Raises:
            ServerBusy: no pooled connection came free in `pool_timeout` seconds, or a
                statement ran past `statement_timeout` or waited past `lock_timeout`.
        """
        sql, args = scope_statement(
            extra=self._local, workspace_id=workspace_id, user_id=user_id, lookup_hash=lookup_hash
        )
        try:
            async with self._sessions() as session, session.begin():
                if sql:
                    connection = await session.connection()
                    await connection.exec_driver_sql(sql, args)
                yield session
        except PoolTimeout as exc:
            raise self._busy() from exc
        except DBAPIError as exc:
            setting = TIMED_OUT.get(getattr(exc.orig, "sqlstate", None) or "")
            if setting is None:
                raise
            raise _timed_out(setting) from exc

    @asynccontextmanager
    async def driver_transaction(
        self,
        workspace_id: uuid.UUID | None = None,
        *,
        user_id: uuid.UUID | None = None,
        lookup_hash: str | None = None,
    ) -> AsyncIterator[asyncpg.Connection]:
        """Yields a pooled asyncpg connection inside one transaction, scoped as `transaction`
        scopes, for the hot paths (search, authentication) that skip the ORM's per-statement
        cost (bench/README.md). Same pool, role, scope, timeouts and commit/rollback rules as
        `transaction`; statements are SQL text with `$n` placeholders.

        Raises:
            ServerBusy: as `transaction`.
        """
        sql, args = scope_statement(
            extra=self._local, workspace_id=workspace_id, user_id=user_id, lookup_hash=lookup_hash
        )
        try:
            async with self.engine.connect() as connection:
                raw = (await connection.get_raw_connection()).driver_connection
                if not isinstance(raw, asyncpg.Connection):
                    raise TypeError(f"not an asyncpg connection: {raw!r}")
                try:
                    async with raw.transaction():
                        if sql:
                            await raw.execute(sql, *args)
                        yield raw
                finally:
                    if raw.is_in_transaction():  # cancelled mid-statement: don't pool it
                        await connection.invalidate()
        except PoolTimeout as exc:
            raise self._busy() from exc
        except asyncpg.PostgresError as exc:
            setting = TIMED_OUT.get(exc.sqlstate or "")
            if setting is None:
                raise
            raise _timed_out(setting) from exc

    @asynccontextmanager
    async def owner_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Yields an asyncpg connection as the URL's own user (the tables' owner: the role
        set on pooled connections reset), outside any transaction and without timeouts, for
        maintenance only the owner may do and no transaction may hold (`CREATE INDEX
        CONCURRENTLY`). The connection is closed afterwards, never returned to the pool."""
        async with self.engine.connect() as connection:
            try:
                raw = (await connection.get_raw_connection()).driver_connection
                if not isinstance(raw, asyncpg.Connection):
                    raise TypeError(f"not an asyncpg connection: {raw!r}")
                await raw.execute(
                    "RESET ROLE; SET statement_timeout = 0; SET lock_timeout = 0;"
                    " SET idle_in_transaction_session_timeout = 0"
                )
                yield raw
            finally:
                await connection.invalidate()

    def _busy(self) -> ServerBusy:
        return ServerBusy(
            "The server is at capacity: no database connection came free in "
            f"{self.pool_timeout:g} s. Retry shortly.",
            retry_after=1,
        )

    async def dispose(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()


def _timed_out(setting: str) -> ServerBusy:
    return ServerBusy(
        f"The database did not finish in time ({setting}); nothing was changed. Retry shortly.",
        retry_after=1,
    )


def _check_at_checkout(engine: AsyncEngine) -> None:
    """Discards closed pooled connections and pings ones idle over `PING_AFTER_IDLE_SECONDS`
    when they are checked out; raising `DisconnectionError` makes the pool open a new one.

    Source: SQLAlchemy, "Disconnect Handling - Pessimistic" / "Custom / Legacy Pessimistic
    Ping" (docs.sqlalchemy.org/en/21/core/pooling.html).
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: object) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the connection was closed")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                dbapi_connection.ping()
            except Exception as exc:
                raise DisconnectionError("the connection did not answer a ping") from exc
