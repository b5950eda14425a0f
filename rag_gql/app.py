"""The Starlette application: `/graphql` (HTTP + WebSocket, GraphiQL and its assets under
`/graphql/static`), `/documents/{id}/file` (a document's original file,
`rag_gql.graphql.files`) and `/healthz` (the process is up). Readiness and metrics are not here:
the lifespan opens them on the operations listener (`rag_gql.operations`, `METRICS_PORT`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from rag_gql.body_limits import BodyLimitMiddleware
from rag_gql.config import Settings
from rag_gql.graphql import files
from rag_gql.graphql.view import STATIC_PATH, GraphQLView
from rag_gql.ingestion.worker import ingestion_worker
from rag_gql.observability.requests import RequestIdMiddleware
from rag_gql.operations import operations_listener
from rag_gql.resources import open_services

if TYPE_CHECKING:
    from rag_gql.observability.otel import Tracing

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, tracing: Tracing | None = None) -> Starlette:
    """Returns the ASGI app for `settings`; its lifespan opens and closes the services.

    `settings.database_url` must be set: `rag-gql serve` starts the embedded database first
    and passes its URL in. With `tracing` (from `rag_gql.observability.tracing.setup_tracing`;
    its owner shuts it down), requests, GraphQL operations, SQL statements and Ollama calls
    are traced. The lifespan also serves `/readyz` and `/metrics` on `METRICS_HOST` and
    `METRICS_PORT` (`rag_gql.operations`; not traced), with these services, and sweeps the
    answers lost by a process that died (`AnswerRuns.sweep_lost_every`).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            open_services(settings, tracing=tracing) as services,
            AsyncExitStack() as stack,
        ):
            app.state.services = services
            # Opened after the services and closed before them; `GracefulServer` marks it
            # draining when a shutdown begins.
            app.state.operations = await stack.enter_async_context(operations_listener(services))
            if settings.worker_in_process:
                await stack.enter_async_context(ingestion_worker(services))
            # Answers left `streaming` by a process that died: stored `interrupted`.
            sweeper = asyncio.create_task(services.generation.runs.sweep_lost_every())
            stack.push_async_callback(_cancel, sweeper)
            log.info("rag-gql ready: GraphQL at /graphql")
            yield

    extensions = []
    if tracing is not None:
        from rag_gql.graphql.tracing import tracing_extension  # needs the otel extra

        extensions.append(tracing_extension(tracing))
    view = GraphQLView(settings, extensions=extensions)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def index(request: Request) -> Response:
        return RedirectResponse("/graphql")

    routes = [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        Route(files.ROUTE, files.document_file, methods=["GET", "HEAD"]),
        Mount(STATIC_PATH, StaticFiles(packages=[("rag_gql", "static/graphiql")])),
        Route("/healthz", healthz),
        Route("/", index),
    ]
    middleware = [
        Middleware(RequestIdMiddleware),
        # Outside everything that reads a body or authenticates (the 413 gets a request id).
        Middleware(
            BodyLimitMiddleware,
            max_body_bytes=settings.graphql_max_body_bytes,
            max_upload_bytes=settings.max_upload_bytes,
        ),
    ]
    if tracing is not None:
        middleware.append(tracing.asgi_middleware())  # inside: the request id is bound
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancels `task` and waits for it to end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
