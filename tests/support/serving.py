"""Serves the real app for a `Settings` of the test's choosing (conftest serves only its own).

Used where a test needs other settings than conftest's `settings` fixture, such as an
unreachable Ollama or a small embedding batch: `settings.model_copy(update={...})`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from rag_gql.app import create_app
from rag_gql.config import Settings
from rag_gql.server import GracefulServer, server_config
from tests.support.graphql_client import GraphQLClient

if TYPE_CHECKING:
    from rag_gql.observability.otel import Tracing


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SMALL_STEPS = {
    "EMBED_BATCH_SIZE": "4",
    "INGEST_PAGE_BATCH": "2",
    "PARSE_PROCESSES": "0",
    "WORKER_HEARTBEAT_INTERVAL": "0.5",
    "WORKER_STALLED_TIMEOUT": "2",
    "WORKER_RECOVERY_INTERVAL": "1",
}
"""Worker settings for tests that kill one: small steps, so that a kill lands in the middle of
a document, and quick detection of the dead worker."""


def environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a child process (`python -m rag_gql.cli ...`) configured like
    `settings` (database, Ollama, SMTP, sizes), plus `overrides` (setting names in capitals).

    No operations listener (`METRICS_PORT=0`) unless `overrides` give a port: children that
    run together would all take the default one."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    assert settings.database_url and settings.smtp_host
    env.update(
        DATABASE_URL=settings.database_url,
        DATA_DIR=str(settings.data_dir),
        OLLAMA_URL=settings.ollama_url,
        EMBED_DIM=str(settings.embed_dim),
        CHUNK_SIZE=str(settings.chunk_size),
        CHUNK_OVERLAP=str(settings.chunk_overlap),
        JWT_SECRET=settings.resolved_jwt_secret().decode(),
        PASSWORD_HASH_PROFILE="CHEAPEST",
        SMTP_HOST=settings.smtp_host,
        SMTP_PORT=str(settings.smtp_port),
        MAIL_FROM=settings.mail_from,
        METRICS_PORT="0",
    )
    env.update(overrides)
    return env


@dataclass(frozen=True)
class Served:
    """A running app: its two listeners and the public one's server."""

    url: str
    """Base URL of the public listener (`/graphql`, `/healthz`)."""
    metrics_url: str
    """Base URL of the operations listener (`/readyz`, `/metrics`, `/healthz`)."""
    server: GracefulServer
    """`server.should_exit = True` shuts the app down as SIGTERM does."""


@asynccontextmanager
async def serve(settings: Settings, *, tracing: Tracing | None = None) -> AsyncIterator[str]:
    """Runs the app for `settings` with uvicorn on a free loopback port; yields its base URL.

    With `tracing`, the app traces to it (`create_app`)."""
    async with serve_server(settings, tracing=tracing) as served:
        yield served.url


@asynccontextmanager
async def serve_client(settings: Settings, *, timeout: float = 30) -> AsyncIterator[GraphQLClient]:
    """`serve`, yielding a GraphQL client of the served app (HTTP `timeout` in seconds)."""
    async with serve(settings) as url, httpx.AsyncClient(timeout=timeout) as http:
        yield GraphQLClient(http, url)


@asynccontextmanager
async def serve_server(
    settings: Settings, *, tracing: Tracing | None = None
) -> AsyncIterator[Served]:
    """`serve`, yielding both listeners' URLs and the server (the block's exit waits for the
    shutdown to end). The operations listener gets a free loopback port of its own, whatever
    `settings.metrics_port` says."""
    port = free_port()
    operations = {"metrics_host": "127.0.0.1", "metrics_port": free_port()}
    settings = settings.model_copy(update=operations)
    app = create_app(settings, tracing=tracing)
    config = server_config(
        app,
        settings,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        # uvicorn closes idle keep-alive connections after 5 s; a client that reuses one at
        # that moment gets a ReadError. Tests pause longer than that (building fixtures).
        timeout_keep_alive=300,
    )
    server = GracefulServer(config, app=app, grace=settings.shutdown_grace)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", app.state.operations.url, server)
    finally:
        server.should_exit = True
        await task
