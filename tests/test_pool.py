"""The connection pool replaces stale connections at checkout without pinging every one:
a connection whose server process went away is discarded, and one idle past
`PING_AFTER_IDLE_SECONDS` that fails its ping is replaced, so the unit of work that follows
succeeds either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from rag_gql.config import Settings
from rag_gql.db import Database, session
from tests.support.sql import connect


@pytest.fixture
async def single(settings: Settings) -> AsyncIterator[Database]:
    """The app's `Database` with a pool of exactly one connection."""
    db = Database(settings.database_url or "", pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        yield db
    finally:
        await db.dispose()


async def backend_pid(db: Database) -> int:
    async with db.transaction() as s:
        pid: int = (await s.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def test_a_connection_whose_server_process_ended_is_replaced(
    single: Database, settings: Settings
) -> None:
    before = await backend_pid(single)
    async with connect(settings) as admin:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", before)
    for _ in range(100):  # until the pooled connection's socket has seen the close
        await asyncio.sleep(0.01)
        if await admin_sees_gone(settings, before):
            break
    await asyncio.sleep(0.05)
    after = await backend_pid(single)
    assert after != before


async def admin_sees_gone(settings: Settings, pid: int) -> bool:
    async with connect(settings) as admin:
        return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


async def test_an_idle_connection_that_fails_its_ping_is_replaced(
    single: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await backend_pid(single)
    pings: list[int] = []
    original: Callable[[Any], None] = AsyncAdapt_asyncpg_connection.ping

    def ping(self: Any) -> None:
        pings.append(1)
        if len(pings) == 1:
            raise ConnectionResetError("as if the server had gone")
        original(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", ping)
    monkeypatch.setattr(session, "PING_AFTER_IDLE_SECONDS", 0.0)
    after = await backend_pid(single)
    assert pings, "an idle connection is pinged"
    assert after != before, "the one that failed its ping was replaced"


async def test_a_recently_used_connection_is_not_pinged(
    single: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await backend_pid(single)
    pings: list[int] = []

    def ping(self: Any) -> None:
        pings.append(1)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", ping)
    for _ in range(3):
        assert await backend_pid(single) == before
    assert pings == []


async def test_a_new_connection_serves_the_driver_path_and_stays_pooled(single: Database) -> None:
    # The role is set outside any transaction: the first unit of work on a new connection,
    # through the driver, is a transaction of its own (not a savepoint in one left open by
    # the role's statement), and the connection goes back to the pool after it.
    seen = []
    for _ in range(3):
        async with single.driver_transaction() as conn:
            seen.append(tuple(await conn.fetchrow("SELECT pg_backend_pid(), current_user")))
    async with single.transaction() as s:
        orm = tuple((await s.execute(text("SELECT pg_backend_pid(), current_user"))).one())
    pid = seen[0][0]
    assert seen == [(pid, session.APP_ROLE)] * 3, "one connection, kept"
    assert orm == (pid, session.APP_ROLE), "the role outlives the ORM's rollback on check-in"
