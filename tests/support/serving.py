"""Serves the real app for a `Settings` of the test's choosing (conftest serves only its own).

Used where a test needs other settings than conftest's `settings` fixture, such as an
unreachable Ollama or a small embedding batch: `settings.model_copy(update={...})`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from rag_gql.app import create_app
from rag_gql.config import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """Runs the app for `settings` with uvicorn on a free loopback port; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        # uvicorn closes idle keep-alive connections after 5 s; a client that reuses one at
        # that moment gets a ReadError. Tests pause longer than that (building fixtures).
        timeout_keep_alive=300,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
