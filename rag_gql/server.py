"""Serving the app with uvicorn: WebSocket keep-alive from the settings, and a graceful
shutdown.

On SIGTERM (or SIGINT) `GracefulServer`, in this order:

1. stops accepting connections (the listening sockets close: new clients are refused), and
   `/readyz` on the operations listener (`rag_gql.operations`) answers 503 from now on;
2. waits up to `SHUTDOWN_GRACE` seconds for the answers running to finish, those whose
   client left included (sockets stay open meanwhile, so their `AnswerDone` and `complete`
   reach the clients);
3. closes every WebSocket with a close frame, 1012 ("service restart"); HTTP requests in
   progress get what is left of the grace period to finish;
4. runs the lifespan's shutdown (the ingestion worker gives its jobs `SHUTDOWN_GRACE` too,
   the operations listener stops, the answers still running stop, stored `interrupted`, then
   the database pool closes); `rag-gql serve` stops the embedded PostgreSQL last.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette

from rag_gql.config import Settings

log = logging.getLogger(__name__)

SETTLE = 0.2
"""Seconds given to the last frames of finished answers (`complete`) before sockets close."""


def server_config(app: Starlette, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app`: `options` (host, port, logging, ...) plus the
    WebSocket keep-alive and the shutdown grace of `settings`."""
    return uvicorn.Config(
        app,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace)),
        **options,
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's server, with running answers let finish before connections are closed (see
    the module's docstring). `app` is the Starlette app whose lifespan put its `Services` in
    `app.state.services` and its operations listener in `app.state.operations`."""

    def __init__(self, config: uvicorn.Config, *, app: Starlette, grace: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        for server in self.servers:
            server.close()  # no new connections; uvicorn's own shutdown closes them again
        operations = getattr(self._app.state, "operations", None)
        if operations is not None:
            operations.draining = True
        services = getattr(self._app.state, "services", None)
        if services is not None:
            streams = services.generation.streams
            if streams.total:
                log.info(
                    "shutting down: waiting up to %.0f s for %d answer(s) being streamed",
                    self._grace,
                    streams.total,
                )
                try:
                    async with asyncio.timeout(self._grace):
                        await streams.wait_idle()
                    await asyncio.sleep(SETTLE)
                except TimeoutError:
                    log.warning("shutting down: %d answer(s) cut at the grace", streams.total)
        left = self._grace - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(1, math.ceil(left))
        await super().shutdown(sockets)
