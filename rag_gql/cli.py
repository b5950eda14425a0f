"""The `rag-gql` command: `serve`, `worker`, `ingest`, `reindex`, `migrate`, `export-schema`,
`export-config-docs`, `eval`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from rag_gql.config import Settings
from rag_gql.db import migrate
from rag_gql.db.embedded import start_embedded
from rag_gql.observability.logs import LogFormat
from rag_gql.services.retrieval import SearchMode

if TYPE_CHECKING:
    from rag_gql.observability.otel import Tracing

log = logging.getLogger("rag_gql")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rag-gql` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rag-gql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the GraphQL API server")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--log-level", default="info", help="debug, info, warning, error")
    worker = commands.add_parser(
        "worker", help="run an ingestion worker (more of them, anywhere that reaches the database)"
    )
    worker.add_argument("--log-level", default="info", help="debug, info, warning, error")
    ingest = commands.add_parser(
        "ingest", help="bulk-load files and folders (duplicates skipped by SHA-256)"
    )
    ingest.add_argument("paths", type=Path, nargs="+", help="files or folders (walked)")
    ingest.add_argument(
        "--workspace",
        default="ingest",
        help="workspace id or name; a name not found creates it (default: ingest)",
    )
    ingest.add_argument("--collection", help="collection id or name (created if new)")
    ingest.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="user metadata of every file (repeatable; a number, true or false is typed, a "
        "key given twice is a list); a sidecar NAME.meta.json beside a file adds its own keys",
    )
    ingest.add_argument(
        "--no-worker",
        action="store_true",
        help="only queue the files: other workers (`rag-gql serve`, `rag-gql worker`) ingest them",
    )
    ingest.add_argument("--log-level", default="warning", help="debug, info, warning, error")
    reindex = commands.add_parser(
        "reindex", help="parse and embed documents again with the current model"
    )
    reindex.add_argument("--all", action="store_true", required=True, help="every document")
    reindex.add_argument("--log-level", default="info", help="debug, info, warning, error")
    commands.add_parser("migrate", help="apply the database migrations and exit")
    export = commands.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", help="write to this file instead of stdout")
    config_docs = commands.add_parser(
        "export-config-docs",
        help="print the settings reference (what docs/configuration.md holds) as Markdown",
    )
    config_docs.add_argument("--output", type=Path, help="write to this file instead of stdout")
    evaluate = commands.add_parser(
        "eval",
        help="measure search quality on labelled questions (hit@n, recall, MRR, nDCG, latency)",
    )
    evaluate.add_argument(
        "questions", type=Path, help="JSONL, one object a line: question, document, pages[, kind]"
    )
    evaluate.add_argument(
        "--corpus", type=Path, required=True, help="folder holding the questions' documents"
    )
    evaluate.add_argument(
        "--modes",
        type=parse_modes,
        default="VECTOR,KEYWORD,HYBRID",
        help="comma-separated search modes (default VECTOR,KEYWORD,HYBRID)",
    )
    evaluate.add_argument("--k", type=_positive, default=10, help="hits per search (default 10)")
    evaluate.add_argument(
        "--workspace-name",
        default="eval",
        help="the eval user's workspace, created or reused; another name starts afresh",
    )
    evaluate.add_argument(
        "--answers",
        action="store_true",
        help="also answer every question and have the chat model judge the answers "
        "(faithfulness, answer relevance, citation precision, after RAGAS)",
    )
    evaluate.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the baseline rows (plain BM25, BM25+RRF with the same vectors; need bm25s)",
    )
    evaluate.add_argument("--log-level", default="info", help="debug, info, warning, error")
    args = parser.parse_args(argv)

    if args.command == "export-schema":
        return export_schema(args.output)
    if args.command == "export-config-docs":
        return export_config_docs(args.output)

    try:
        settings = Settings()
    except ValidationError as exc:
        # A configuration mistake: say which setting and why, without a traceback.
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            sys.stderr.write(f"rag-gql: invalid {name}: {error['msg']}\n")
        return 2
    configure_logging(getattr(args, "log_level", "info"), settings.log_format)
    if args.command == "serve":
        return serve_forever(settings, host=args.host, port=args.port, log_level=args.log_level)
    if args.command == "worker":
        return run_worker_forever(settings)
    if args.command == "ingest":
        return bulk_ingest(
            settings,
            args.paths,
            workspace=args.workspace,
            collection=args.collection,
            run_worker=not args.no_worker,
            metadata=args.metadata,
        )
    if args.command == "reindex":
        return reindex_all(settings)
    if args.command == "eval":
        from rag_gql.eval_command import evaluate_retrieval

        return evaluate_retrieval(
            settings,
            database=database,
            questions_path=args.questions,
            corpus=args.corpus,
            modes=args.modes,
            k=args.k,
            workspace_name=args.workspace_name,
            baseline=not args.no_baseline,
            answers=args.answers,
        )
    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
    return 0


def serve_forever(settings: Settings, *, host: str, port: int, log_level: str) -> int:
    """Starts the database if needed, migrates it, serves until Ctrl-C or SIGTERM.

    Traces when the OpenTelemetry variables ask for it (`rag_gql.observability.tracing`);
    returns 2 at once when they do and tracing cannot work (the `otel` extra is missing).
    """
    from rag_gql.observability.tracing import TracingSetupError, setup_tracing

    if not jwt_secret_ready(settings):
        return 2
    try:
        tracing = setup_tracing()
    except TracingSetupError as exc:
        log.error("%s", exc)
        return 2
    if tracing is not None:
        log.info("OpenTelemetry tracing on")
    try:
        return _serve(settings, host=host, port=port, log_level=log_level, tracing=tracing)
    finally:
        if tracing is not None:
            tracing.shutdown()  # the spans still buffered


def _serve(
    settings: Settings, *, host: str, port: int, log_level: str, tracing: Tracing | None
) -> int:
    from rag_gql.app import create_app
    from rag_gql.server import GracefulServer, server_config

    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        app = create_app(settings.model_copy(update={"database_url": url}), tracing=tracing)
        config = server_config(
            app,
            settings,
            host=host,
            port=port,
            log_level=log_level.lower(),
            # Through our structlog handler (configure_logging); the app writes its own access
            # lines, with the request id and without query strings.
            log_config=None,
            access_log=False,
        )
        # Lets running answers finish, then closes sockets with 1012 (rag_gql/server.py).
        server = GracefulServer(config, app=app, grace=settings.shutdown_grace)
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


def run_worker_forever(settings: Settings) -> int:
    """`rag-gql worker`: runs an ingestion worker until Ctrl-C or SIGTERM, with readiness and
    metrics on the operations listener (`METRICS_PORT`, `rag_gql.operations`); returns 1 when
    the configuration cannot work (`StartupError`: the log says which setting)."""
    from rag_gql.ingestion.worker import ingestion_worker
    from rag_gql.operations import operations_listener
    from rag_gql.resources import StartupError, open_services

    async def work(settings: Settings) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with (
            open_services(settings) as services,
            operations_listener(services) as operations,
            ingestion_worker(services),
        ):
            log.info("ingestion worker running; Ctrl-C or SIGTERM stops it")
            await stop.wait()
            if operations is not None:
                operations.draining = True
            log.info("stopping: running jobs get SHUTDOWN_GRACE=%gs", settings.shutdown_grace)

    if not jwt_secret_ready(settings):
        return 2
    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        try:
            asyncio.run(work(settings.model_copy(update={"database_url": url})))
        except StartupError as exc:
            log.error("%s", exc)
            return 1
    return 0


def jwt_secret_ready(settings: Settings) -> bool:
    """Generates the JWT secret into DATA_DIR if needed, before any server or process starts;
    False (logged) when DATA_DIR cannot hold it."""
    try:
        settings.resolved_jwt_secret()
    except OSError as exc:
        log.error("cannot keep the generated JWT secret in DATA_DIR=%s: %s", settings.data_dir, exc)
        return False
    return True


def bulk_ingest(
    settings: Settings,
    paths: Sequence[Path],
    *,
    workspace: str,
    collection: str | None,
    run_worker: bool,
    metadata: Sequence[str] = (),
) -> int:
    """`rag-gql ingest`: queues every file under `paths` with `metadata` (`key=value`
    arguments, `bulk.parse_metadata_args`), shows progress, prints a summary.

    Returns 0 when every file was ingested or a duplicate, 1 when any failed, 2 on bad paths
    or bad metadata arguments.
    """
    from rag_gql.eval_command import eval_principal
    from rag_gql.ingestion import bulk
    from rag_gql.services import operators

    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        log.error("no such file or folder: %s", ", ".join(missing))
        return 2
    try:
        common = bulk.parse_metadata_args(metadata)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    files = list(bulk.walk(paths))
    if not files:
        log.error("no files under %s", ", ".join(map(str, paths)))
        return 2

    async def load(settings: Settings) -> list[bulk.FileOutcome]:
        from rag_gql.ingestion.worker import ingestion_worker
        from rag_gql.resources import open_services

        async with open_services(settings) as services, AsyncExitStack() as stack:
            principal = await operators.operator_principal(
                services.db, workspace, new_workspace=eval_principal
            )
            collection_id = (
                await operators.operator_collection(services.db, principal, collection)
                if collection
                else None
            )
            if run_worker:
                await stack.enter_async_context(ingestion_worker(services))
            outcomes = await bulk.submit_all(
                services, principal, files, collection_id, metadata=common
            )
            with bulk.progress_bar(True) as show:
                await bulk.wait_for(services.db, principal.workspace_id, outcomes, show)
            return outcomes

    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        started = time.perf_counter()
        outcomes = asyncio.run(load(settings.model_copy(update={"database_url": url})))
        elapsed = time.perf_counter() - started
    sys.stdout.write(bulk.summary_table(outcomes))
    pages = sum(o.pages for o in outcomes if o.status == "READY")
    sys.stdout.write(f"\n{len(files)} files in {elapsed:.1f} s ({pages / elapsed:.1f} pages/s)\n")
    return 1 if any(o.status in ("FAILED", "REJECTED") for o in outcomes) else 0


def reindex_all(settings: Settings) -> int:
    """`rag-gql reindex --all`: queues every document; running workers pick them up."""
    from rag_gql.resources import open_services

    async def requeue(settings: Settings) -> int:
        async with open_services(settings) as services:
            return await services.ingestion.reindex_all()

    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        count = asyncio.run(requeue(settings.model_copy(update={"database_url": url})))
    log.info(
        "queued %d documents for reindexing; a running `rag-gql serve` or `rag-gql worker` "
        "processes them (each keeps its old chunks until its new ones are written)",
        count,
    )
    return 0


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


def export_config_docs(output: Path | None) -> int:
    """Writes the settings reference (`rag_gql.config_docs`) to `output` or stdout."""
    from rag_gql.config_docs import write_reference

    page = write_reference(output)
    if output is None:
        sys.stdout.write(page)
    return 0


def parse_modes(value: str) -> list[SearchMode]:
    """`"VECTOR,HYBRID"` → those modes, in order.

    Raises:
        argparse.ArgumentTypeError: a name is not a `SearchMode`, or none is given.
    """
    names = [name.strip().upper() for name in value.split(",") if name.strip()]
    if not names or not all(name in SearchMode.__members__ for name in names):
        choices = ",".join(mode.value for mode in SearchMode)
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {choices}")
    return [SearchMode[name] for name in dict.fromkeys(names)]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


class _Stop(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def configure_logging(level: str, log_format: LogFormat = "auto") -> None:
    """structlog on stderr (`rag_gql.observability.logs`): JSON unless a terminal or
    `LOG_FORMAT=console`; libraries' chatter only at WARNING."""
    from rag_gql.observability.logs import configure_logging as configure

    configure(level, log_format)


if __name__ == "__main__":
    sys.exit(main())
