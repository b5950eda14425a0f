"""The Starlette application: `/graphql` (HTTP + WebSocket, GraphiQL), `/healthz`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from rag_gql.config import Settings
from rag_gql.graphql.view import GraphQLView
from rag_gql.resources import open_services

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Starlette:
    """Returns the ASGI app for `settings`; its lifespan opens and closes the services.

    `settings.database_url` must be set: `rag-gql serve` starts the embedded database first
    and passes its URL in.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            log.info("rag-gql ready: GraphQL at /graphql")
            yield

    view = GraphQLView()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def index(request: Request) -> Response:
        return RedirectResponse("/graphql")

    routes = [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        Route("/healthz", healthz),
        Route("/", index),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
