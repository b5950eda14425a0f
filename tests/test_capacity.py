"""A process at capacity: a burst of answers waits in line and completes; a request that gets
no database connection in `DB_POOL_TIMEOUT` seconds is refused with `SERVER_BUSY`, typed and
retryable, never as an internal error."""

from __future__ import annotations

import asyncio
import time

import pytest

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.errors import ServerBusy
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect

ASK = (
    "mutation($q: String!) { ask(question: $q, k: 2) { text grounded "
    "sources { page document { filename } } } }"
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two pooled connections (an ingestion job uses both: one for its chunks' transaction,
    one for its progress), none beyond them; one answer retrieving at a time; no per-user cap
    on answers at once (the burst below comes from one user)."""
    return settings.model_copy(
        update={
            "db_pool_size": 2,
            "db_max_overflow": 0,
            "max_answers_retrieving": 1,
            "max_answer_streams_per_user": 100,
        }
    )


async def test_a_burst_of_answers_waits_in_line_and_every_one_completes(
    gql: GraphQLClient, inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 connections cannot serve WORKER_CONCURRENCY (3) ingestion jobs at once: said at start.
    started = " ".join(r.getMessage() for r in caplog.get_records("setup"))
    assert "(2) leave no connection beside 3 ingestion jobs" in started
    token = await sign_up(gql, inbox, "ada@example.com")
    pdf = make_pdf(["Sourdough bread needs flour, water, salt and a lively starter."])
    await gql.upload("bread.pdf", pdf, token=token)

    bodies = await asyncio.gather(
        *(
            gql.execute(ASK, {"q": f"What does sourdough bread need? ({n})"}, token=token)
            for n in range(24)
        )
    )
    assert [b.get("errors") for b in bodies] == [None] * 24, bodies
    for body in bodies:
        assert body["data"]["ask"]["grounded"] is True
        assert body["data"]["ask"]["sources"][0]["document"]["filename"] == "bread.pdf"
    data = await gql.data(
        "{ conversations(first: 50) { edges { node { messages { role status } } } } }",
        token=token,
    )
    stored = [n["node"]["messages"] for n in data["conversations"]["edges"]]
    assert len(stored) == 24
    for messages in stored:
        assert [(m["role"], m["status"]) for m in messages] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]


async def test_no_connection_in_time_is_server_busy_and_the_server_recovers(
    inbox: Inbox, settings: Settings
) -> None:
    settings = settings.model_copy(update={"db_pool_size": 1, "db_pool_timeout": 1.0})
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        async with connect(settings) as conn, conn.transaction():
            # Every request reads `user`: the first holds the only pooled connection while
            # it waits for this lock; the next finds no connection free.
            await conn.execute('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE')
            holder = asyncio.create_task(gql.execute("{ me { email } }", token=token))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            body = await gql.execute("{ me { email } }", token=token)
            waited = time.monotonic() - started
        (error,) = body["errors"]
        assert error["extensions"] == {"code": "SERVER_BUSY", "retryAfter": 1}, body
        assert "no database connection came free in 1 s" in error["message"]
        assert 0.9 <= waited < 10
        # Once the lock is gone the held request ends normally, and so does the next.
        assert (await holder)["data"]["me"]["email"] == "ada@example.com"
        me = await gql.data("{ me { email } }", token=token)
        assert me["me"]["email"] == "ada@example.com"


async def test_the_pool_wait_is_bounded_by_a_setting(settings: Settings) -> None:
    db = Database(settings.database_url or "", pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with db.transaction() as session:
            await session.connection()  # the pool's only connection
            with pytest.raises(ServerBusy) as caught:
                async with db.transaction() as other:
                    await other.connection()
            assert caught.value.extensions() == {"retryAfter": 1}
        async with db.transaction() as session:  # free again
            await session.connection()
    finally:
        await db.dispose()
