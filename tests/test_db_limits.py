"""The database under stress: bound parameters never in errors or logs, request statements
bounded by the timeouts (a typed SERVER_BUSY, the connection back in the pool), the ingestion
worker's long transaction free of them."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.errors import ServerBusy
from tests.support.accounts import sign_up
from tests.support.ollama_standin import OllamaStandin
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error

SECRET = "victim@example.com"
BOUNDED = {
    "db_pool_size": 1,  # the one connection must come back after every refusal
    "db_max_overflow": 0,
    "db_pool_timeout": 5.0,
}


async def test_bound_parameters_stay_out_of_errors_and_logs(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(settings.database_url or "", echo=True)
    try:
        with (
            caplog.at_level(logging.INFO, logger="sqlalchemy.engine"),
            pytest.raises(DBAPIError) as caught,
        ):
            async with db.transaction() as session:
                await session.execute(text("SELECT CAST(:email AS text), 1 / 0"), {"email": SECRET})
    finally:
        await db.dispose()
    assert "division by zero" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert "SELECT CAST" in caplog.text  # the statement is logged, its parameters are not
    assert SECRET not in caplog.text


async def test_a_lock_wait_past_db_lock_timeout_is_server_busy(
    inbox: Inbox, settings: Settings
) -> None:
    settings = settings.model_copy(
        update=BOUNDED | {"db_lock_timeout": 0.5, "db_statement_timeout": 0}
    )
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "lock@example.com")
        async with connect(settings) as conn, conn.transaction():
            await conn.execute("LOCK TABLE document IN ACCESS EXCLUSIVE MODE")
            for _ in range(2):  # the second finds the pool's one connection back
                started = time.monotonic()
                body = await asyncio.wait_for(
                    gql.execute("{ documents(first: 5) { edges { cursor } } }", token=token), 10
                )
                assert time.monotonic() - started < 5
                assert_server_busy(body, "DB_LOCK_TIMEOUT")
        data = await gql.data("{ documents(first: 5) { edges { cursor } } }", token=token)
        assert data == {"documents": {"edges": []}}


async def test_a_statement_past_db_statement_timeout_is_server_busy(
    inbox: Inbox, settings: Settings
) -> None:
    """The statement waits on a lock with no lock timeout: `statement_timeout` ends it (on
    authentication's asyncpg connection, outside SQLAlchemy)."""
    settings = settings.model_copy(
        update=BOUNDED | {"db_lock_timeout": 0, "db_statement_timeout": 0.5}
    )
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "slow@example.com")
        async with connect(settings) as conn, conn.transaction():
            await conn.execute('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE')
            for _ in range(2):
                body = await asyncio.wait_for(gql.execute("{ me { email } }", token=token), 10)
                assert_server_busy(body, "DB_STATEMENT_TIMEOUT")
        assert await gql.data("{ me { email } }", token=token) == {
            "me": {"email": "slow@example.com"}
        }


def assert_server_busy(body: dict[str, object], setting: str) -> None:
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, body
    (error,) = errors
    assert error["extensions"] == {"code": "SERVER_BUSY", "retryAfter": 1}, body
    assert setting in error["message"], error
    assert "Traceback" not in error["message"], error


async def test_the_timeouts_bind_requests_and_the_worker_view_lifts_them(
    settings: Settings,
) -> None:
    db = Database(
        settings.database_url or "",
        pool_size=1,
        max_overflow=0,
        statement_timeout=0.3,
        idle_in_transaction_timeout=0.5,
    )
    try:
        with pytest.raises(ServerBusy, match="DB_STATEMENT_TIMEOUT"):
            async with db.transaction() as session:
                await session.execute(text("SELECT pg_sleep(2)"))
        worker = db.without_timeouts()
        async with worker.transaction() as session:
            await session.execute(text("SELECT pg_sleep(0.6)"))  # past both request limits
            await asyncio.sleep(0.7)
            assert (await session.execute(text("SHOW statement_timeout"))).scalar_one() == "0"
        async with worker.driver_transaction() as conn:
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "0"
        # A request's transaction left idle is closed by PostgreSQL; the pool recovers.
        with pytest.raises((DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(1.2)
                await session.execute(text("SELECT 1"))
        async with db.transaction() as session:
            assert (await session.execute(text("SHOW statement_timeout"))).scalar_one() == "300ms"
    finally:
        await db.dispose()


async def test_ingestion_outlasts_the_request_timeouts(
    inbox: Inbox, settings: Settings, ollama_server: OllamaStandin
) -> None:
    """Each embedding call keeps the chunks' transaction idle longer than the request limits
    allow: the worker's connection is not bound by them."""
    settings = settings.model_copy(
        update={
            "db_idle_in_transaction_timeout": 0.3,
            "db_statement_timeout": 0.3,
            "ingest_page_batch": 1,
        }
    )
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "long@example.com")
        ollama_server.state.delay = 0.6
        try:
            response = await gql.upload(
                "long.pdf", make_pdf(["first page", "second page"]), token=token
            )
        finally:
            ollama_server.state.delay = 0.0
    document = response.json()["data"]["uploadDocument"]
    assert (document["status"], document["chunkCount"]) == ("READY", 2), document


DELETE_DOCUMENT = "mutation($id: ID!) { deleteDocument(id: $id) }"
DELETE_COLLECTION = "mutation($id: ID!) { deleteCollection(id: $id) }"
SLOW_EMBED = 1.5
"""Seconds each embedding request of the stand-in takes in the deletion tests."""
PAGES = [f"page {n} about slow embeddings" for n in range(8)]


async def _embedding_midway(settings: Settings, document_id: str) -> None:
    """Waits until the document's ingestion has written a batch in its open transaction (its
    first EMBEDDING progress), so it holds the document's row."""
    async with connect(settings) as conn:
        for _ in range(400):
            status = await conn.fetchval(
                "SELECT status FROM document WHERE id = $1::uuid", document_id
            )
            if status == "EMBEDDING":
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"document {document_id} never reached EMBEDDING")


async def _gone(settings: Settings, document_ids: list[str]) -> tuple[int, int]:
    """Waits until none of the documents is stored (up to 20 s); returns the documents and
    chunks left of them, and checks every ingestion job ended as a success (the queue deletes
    those: a failed or aborted one stays)."""
    async with connect(settings) as conn:
        for _ in range(400):
            left = await conn.fetchval(
                "SELECT count(*) FROM document WHERE id = ANY($1::uuid[])", document_ids
            )
            running = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs"
                " WHERE task_name = 'ingest_document' AND status IN ('todo', 'doing')"
            )
            if left == 0 and running == 0:
                break
            await asyncio.sleep(0.05)
        chunks = await conn.fetchval(
            "SELECT count(*) FROM chunk WHERE document_id = ANY($1::uuid[])", document_ids
        )
        jobs = await conn.fetch(
            "SELECT status FROM procrastinate_jobs WHERE task_name = 'ingest_document'"
        )
    assert [r["status"] for r in jobs] == [], jobs
    return left, chunks


def worker_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The application's and the queue's records at ERROR or above (not the stand-in's own:
    it logs the embedding request the worker gave up on as a client disconnect)."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("rag_gql", "procrastinate"))
    ]


async def test_deleting_a_document_being_ingested_answers_at_once(
    inbox: Inbox,
    settings: Settings,
    ollama_server: OllamaStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ingestion holds the document's row for its whole transaction (hours for a big
    book); the delete returns at once, the document is hidden from then on, and the worker
    stops at its next batch, deletes it and ends its job normally."""
    settings = settings.model_copy(update={"ingest_page_batch": 1})
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "del@example.com")
        ollama_server.state.delay = SLOW_EMBED
        try:
            response = await gql.upload("slow.pdf", make_pdf(PAGES), token=token, wait=False)
            document_id = response.json()["data"]["uploadDocument"]["id"]
            await _embedding_midway(settings, document_id)
            started = time.monotonic()
            data = await gql.data(DELETE_DOCUMENT, {"id": document_id}, token=token)
            assert time.monotonic() - started < 3 * SLOW_EMBED
            assert data == {"deleteDocument": True}
            body = await gql.execute(
                "query($id: ID!) { document(id: $id) { status } }", {"id": document_id}, token=token
            )
            assert_error(body, "NOT_FOUND")
            listed = await gql.data("{ documents(first: 5) { edges { cursor } } }", token=token)
            assert listed == {"documents": {"edges": []}}
            again = await gql.execute(DELETE_DOCUMENT, {"id": document_id}, token=token)
            assert_error(again, "NOT_FOUND")
            assert await _gone(settings, [document_id]) == (0, 0)
        finally:
            ollama_server.state.delay = 0.0
    assert not worker_errors(caplog), caplog.text


async def test_deleting_a_collection_being_ingested_answers_at_once(
    inbox: Inbox,
    settings: Settings,
    ollama_server: OllamaStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"ingest_page_batch": 1})
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "coll@example.com")
        created = await gql.data('mutation { createCollection(name: "books") { id } }', token=token)
        collection = created["createCollection"]["id"]
        ready = await gql.upload(
            "ready.pdf", make_pdf(["already indexed"]), token=token, collection=collection
        )
        ready_id = ready.json()["data"]["uploadDocument"]["id"]
        ollama_server.state.delay = SLOW_EMBED
        try:
            response = await gql.upload(
                "slow.pdf", make_pdf(PAGES), token=token, collection=collection, wait=False
            )
            slow_id = response.json()["data"]["uploadDocument"]["id"]
            await _embedding_midway(settings, slow_id)
            started = time.monotonic()
            data = await gql.data(DELETE_COLLECTION, {"id": collection}, token=token)
            assert time.monotonic() - started < 3 * SLOW_EMBED
            assert data == {"deleteCollection": True}
            assert await gql.data("{ collections { id } }", token=token) == {"collections": []}
            listed = await gql.data("{ documents(first: 5) { edges { cursor } } }", token=token)
            assert listed == {"documents": {"edges": []}}
            assert await _gone(settings, [ready_id, slow_id]) == (0, 0)
        finally:
            ollama_server.state.delay = 0.0
    assert not worker_errors(caplog), caplog.text
