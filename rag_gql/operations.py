"""The operations listener: readiness and metrics on an address of their own
(`METRICS_HOST:METRICS_PORT`, default 127.0.0.1:9464), never on the public API's.

- `GET /readyz`: 200 when the database, its migrations and Ollama are fine, else 503 (the
  body of `rag_gql.health`); 503 `{"status": "stopping"}` once a shutdown has
  begun, so that a balancer stops sending new clients while the running answers finish.
- `GET /metrics`: the process's Prometheus registry (`rag_gql.observability.metrics`).
- `GET /healthz`: 200 while the process serves (the public listener answers it too).

`rag-gql serve` opens it from the app's lifespan and `rag-gql worker` beside its worker,
with the process's one `Services`, so both listeners count in the same registry; it stops
before the services close. It is a second `uvicorn.Server` on the process's event loop that
leaves the signals to the main server (or the worker's handlers). `METRICS_PORT=0` opens
none. Nothing here is traced or written to the access log: probes and scrapes come every
few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rag_gql.health import migration_heads, readiness
from rag_gql.ingestion.queue import queue_depth
from rag_gql.resources import Services, StartupError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2
"""Seconds a probe or scrape in progress gets when the listener stops."""


class OperationsListener:
    """A running operations listener: its base URL, and whether a shutdown has begun."""

    def __init__(self, url: str) -> None:
        self.url = url
        """`http://host:port`, the port as bound."""
        self.draining = False
        """Set when the process starts shutting down: `/readyz` answers 503 from then on."""


def create_operations_app(services: Services, listener: OperationsListener) -> Starlette:
    """The ASGI app of the operations listener (no lifespan: `services` are already open)."""
    heads = migration_heads()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if listener.draining:
            return JSONResponse({"status": "stopping", "checks": {}}, status_code=503)
        ready, body = await readiness(services.db, services.ollama, heads, services.ocr)
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        async with services.db.transaction() as session:
            services.metrics.ingest_queue_depth.set(await queue_depth(session))
        data, content_type = services.metrics.render()
        return Response(data, media_type=content_type)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=routes)


@asynccontextmanager
async def operations_listener(services: Services) -> AsyncIterator[OperationsListener | None]:
    """Serves `create_operations_app` on `METRICS_HOST:METRICS_PORT` until the block exits;
    yields the listener, or None when `METRICS_PORT` is 0.

    On exit it stops taking connections and gives those in progress `STOP_TIMEOUT` seconds.

    Raises:
        StartupError: the address cannot be listened on (in use, or not this host's).
    """
    settings = services.settings
    if settings.metrics_port == 0:
        log.info("METRICS_PORT=0: no /readyz or /metrics listener")
        yield None
        return
    sock = await _bind(settings.metrics_host, settings.metrics_port)
    host, port = sock.getsockname()[:2]
    listener = OperationsListener(f"http://{f'[{host}]' if ':' in host else host}:{port}")
    config = uvicorn.Config(
        create_operations_app(services, listener),
        lifespan="off",
        ws="none",
        log_config=None,  # the process's own logging (rag_gql.observability.logs)
        access_log=False,
        timeout_graceful_shutdown=STOP_TIMEOUT,
    )
    server = _SignalFreeServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise StartupError(f"the operations listener on {listener.url} did not start")
            await asyncio.sleep(0.01)
        log.info("readiness and metrics on %s (/readyz, /metrics)", listener.url)
        yield listener
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port`, not yet listening (uvicorn's server listens).

    Bound here rather than by uvicorn, which exits the process when it cannot bind.
    """
    what = f"METRICS_HOST={host} METRICS_PORT={port}"
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = found[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(f"cannot listen on {what}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: quick restarts
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {what}: {exc}. Each process on a host needs its own "
            "METRICS_PORT (0: none)."
        ) from exc
    return sock


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that installs no signal handlers: the process's main server (or
    `rag-gql worker`) handles SIGINT/SIGTERM and stops this one."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
