"""The search's SQL, built as text with asyncpg's `$n` placeholders: vector ranking (exact or
HNSW, cosine), keyword ranking (full-text, through `chunk_fts`), loading and highlighting hits.

Builders only: each returns a `Statement` (text and arguments) that `repositories.chunks` runs
on an asyncpg connection inside `Database.driver_transaction(workspace_id)`, and that tests
and `bench/search.py` read (and replay) to see exactly what is sent. Every statement names the
workspace; the database enforces it as well (row-level security on `chunk`, and for keyword
search the `chunk_fts` view's own condition, migration 0006). The query vector goes as a
`real[]` (asyncpg's binary array encoding) cast to `vector`. Lists go as arrays (`= ANY($n)`),
so a statement's text depends only on which filters are set, and asyncpg's statement cache
keeps one prepared statement per shape. Only placeholders (`$n`) and constants are formatted
into the SQL text (hence the `noqa: S608`); every value goes as an argument.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rag_gql.db.models import Document
from rag_gql.repositories.metadata_sql import MetadataCondition, conditions_sql

# Questions are natural language: a chunk matches on ANY of the query's lexemes
# (`plainto_tsquery` alone ANDs every word and finds nothing for most questions).
_ANY_LEXEME = "replace(plainto_tsquery('english', {})::text, ' & ', ' | ')::tsquery"
HEADLINE_OPTIONS = "StartSel=**, StopSel=**, MaxWords=35, MinWords=12, MaxFragments=2"
DOCUMENT_COLUMNS = tuple(column.name for column in Document.__table__.columns)
"""The document's columns `load_statement` selects after the chunk's, in this order."""
DOCUMENT_ATTRIBUTES = tuple(
    Document.__mapper__.get_property_by_column(column).key for column in Document.__table__.columns
)
"""The `Document` attributes of `DOCUMENT_COLUMNS`, in the same order (`metadata` is `meta`)."""


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL text with asyncpg's `$n` placeholders and its arguments."""

    sql: str
    args: tuple[Any, ...]


class _Args:
    """Collects positional arguments; `add` returns the placeholder of a new one."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


@dataclass(frozen=True, slots=True)
class ChunkScope:
    """Restricts a search; `None` fields do not restrict. Pages are 1-based, inclusive.
    `metadata`: conditions on the documents' user metadata, all of which must hold."""

    collection_ids: Sequence[uuid.UUID] | None = None
    document_ids: Sequence[uuid.UUID] | None = None
    filenames: Sequence[str] | None = None
    page_from: int | None = None
    page_to: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: Sequence[MetadataCondition] | None = None

    def where(self, args: _Args, workspace_id: uuid.UUID) -> str:
        """SQL conditions on `chunk c` for this scope inside `workspace_id` (ANDed)."""
        ws = args.add(workspace_id)
        where = [f"c.workspace_id = {ws}"]
        if self.collection_ids is not None:
            where.append(f"c.collection_id = ANY({args.add(list(self.collection_ids))})")
        if self.document_ids is not None:
            where.append(f"c.document_id = ANY({args.add(list(self.document_ids))})")
        if self.page_from is not None:
            where.append(f"c.page >= {args.add(self.page_from)}")
        if self.page_to is not None:
            where.append(f"c.page <= {args.add(self.page_to)}")
        documents: list[str] = []
        if self.filenames is not None:
            documents.append(f"d.filename = ANY({args.add(list(self.filenames))})")
        if self.created_after is not None:
            documents.append(f"d.created_at >= {args.add(self.created_after)}")
        if self.created_before is not None:
            documents.append(f"d.created_at < {args.add(self.created_before)}")
        if self.metadata:
            documents.append(
                conditions_sql(self.metadata, lambda v, t: args.add(v, f"::{t}"), "d.metadata")
            )
        if documents:
            where.append(
                "c.document_id IN (SELECT d.id FROM document d WHERE "  # noqa: S608
                + " AND ".join([f"d.workspace_id = {ws}", *documents])
                + ")"
            )
        return " AND ".join(where)


class VectorStrategy(enum.Enum):
    """How `chunks.vector_ranked` found the nearest chunks."""

    EXACT = "EXACT"
    """Every chunk in scope compared with the query (recall 1.0); no index orders the rows."""
    HNSW = "HNSW"
    """The HNSW index with pgvector's iterative scan (approximate, `hnsw.ef_search`)."""


@dataclass(frozen=True, slots=True)
class ExactScan:
    """When vector search scans every chunk in scope instead of using the HNSW index.

    Up to `max_rows` chunks in scope, or more when `max_share` of the table is more, but not
    above `share_max_rows` for that reason (whichever of `max_rows` and `share_max_rows` is
    larger bounds it). A filtered HNSW search visits about k / (the scope's share of the
    table) candidates, so a scope with a small share of a big table costs the index dearly
    and loses recall, while the exact scan costs the scope's size. (`EXACT_SEARCH_MAX_ROWS`,
    `EXACT_SEARCH_MAX_SHARE`, `EXACT_SEARCH_SHARE_MAX_ROWS`.)
    """

    max_rows: int
    max_share: float = 0.0
    share_max_rows: int = 0

    def threshold(self, table_rows: float) -> int:
        """The most chunks in scope scanned exactly in a table of `table_rows` (negative:
        unknown, as `pg_class.reltuples` before the first ANALYZE). `vector_statements`
        computes the same in SQL from PostgreSQL's estimate."""
        by_share = min(int(self.max_share * max(table_rows, 0.0)), self.share_max_rows)
        return max(self.max_rows, by_share)


@dataclass(frozen=True, slots=True)
class VectorStatements:
    """What `chunks.vector_ranked` sends after the tenant is set.

    `prepare` sets the transaction-local settings, computes the exact-scan threshold
    (`ExactScan.threshold` of the table's estimated rows) and counts the chunks in scope up to it
    + 1 (its last two columns); `exact` and `hnsw` are the ranked SELECT of each strategy
    (columns: chunk id, cosine distance).
    """

    prepare: Statement
    exact: Statement
    hnsw: Statement

    @staticmethod
    def choose(in_scope: int, threshold: int) -> VectorStrategy:
        """EXACT when at most `threshold` chunks are in scope, else HNSW (the last two
        columns of `prepare`: threshold, then the bounded count)."""
        return VectorStrategy.EXACT if in_scope <= threshold else VectorStrategy.HNSW

    def select(self, strategy: VectorStrategy) -> Statement:
        """The ranked SELECT of `strategy`."""
        return self.exact if strategy is VectorStrategy.EXACT else self.hnsw


def vector_statements(
    *,
    workspace_id: uuid.UUID,
    embedding: Sequence[float],
    limit: int,
    ef_search: int,
    exact: ExactScan,
    scope: ChunkScope | None = None,
) -> VectorStatements:
    """What `chunks.vector_ranked` sends to find up to `limit` chunks of `scope` in `workspace_id`
    nearest to `embedding` (which has the column's dimension).

    Two statements. The first (`prepare`) sets the transaction-local settings, computes the
    threshold (`exact.threshold` of the table's estimated rows) and counts the chunks in
    scope, stopping at the threshold + 1. When at most the threshold are in scope, the
    second is the exact scan: it orders by `(embedding <=> q) + 0`, an expression the HNSW
    index cannot provide, so PostgreSQL computes the distance of every row in scope (found
    through the workspace or document index) and keeps the best `limit` (recall 1.0). Above
    that, it orders by `embedding <=> q`, which the HNSW index (`vector_cosine_ops`) serves
    with `hnsw.ef_search` = max(`ef_search`, `limit`) and pgvector 0.8's iterative scan
    (`relaxed_order`), so filters still return `limit` rows when they exist.

    `plan_cache_mode = force_custom_plan`: asyncpg prepares every statement, and after five
    runs PostgreSQL may settle on one generic plan for every workspace, whatever its size; a
    custom plan is costed for this workspace.

    `exact.max_rows` ≥ 0 (0 and no share: always HNSW unless the scope is empty); `limit` ≥ 1.
    """
    scope = scope or ChunkScope()
    count = _Args()
    count.add(str(max(ef_search, limit)))
    threshold = (
        f"SELECT greatest({count.add(exact.max_rows)}::bigint, least("  # noqa: S608
        f"floor({count.add(exact.max_share)}::float8 * greatest(reltuples, 0))::bigint, "
        f"{count.add(exact.share_max_rows)}::bigint)) AS rows"
        " FROM pg_class WHERE oid = 'chunk'::regclass"
    )
    where = scope.where(count, workspace_id)
    prepare = Statement(
        f"WITH threshold AS ({threshold})"  # noqa: S608
        " SELECT set_config('hnsw.ef_search', $1, true),"
        " set_config('hnsw.iterative_scan', 'relaxed_order', true),"
        " set_config('plan_cache_mode', 'force_custom_plan', true),"
        " (SELECT rows FROM threshold),"
        f" (SELECT count(*) FROM (SELECT 1 FROM chunk c WHERE {where}"
        " LIMIT (SELECT rows + 1 FROM threshold)) AS in_scope)",
        tuple(count.values),
    )

    vector = list(embedding)

    def ranked(exact: bool) -> Statement:
        args = _Args()
        query = args.add(vector, "::real[]::vector")
        where = scope.where(args, workspace_id)
        # Exact: `+ 0` makes an expression the HNSW index cannot provide, so PostgreSQL
        # computes every distance in scope (computed once: the same expression is in the
        # list and the ORDER BY); equal distances go by id whatever the plan. HNSW: the
        # index's order (it can't take a second key).
        distance = f"(c.embedding <=> {query}) + 0" if exact else f"c.embedding <=> {query}"
        order = "distance, c.id" if exact else distance
        sql = (
            f"SELECT c.id, {distance} AS distance FROM chunk c WHERE {where}"  # noqa: S608
            f" ORDER BY {order} LIMIT {args.add(limit)}"
        )
        return Statement(sql, tuple(args.values))

    return VectorStatements(prepare, ranked(True), ranked(False))


def load_statement(
    *,
    workspace_id: uuid.UUID,
    ids: Sequence[int],
    query: str,
    highlight: Sequence[int] | None = None,
) -> Statement:
    """The statement of `chunks.load` (columns: chunk id, ordinal, text, snippet, page, char_start,
    char_end, then the document's columns in `Document.__table__` order). The snippet is
    `ts_headline`'s for the chunks in `highlight` (None: all of `ids`), NULL for the others."""
    args = _Args()
    ws, wanted = args.add(workspace_id), args.add(list(ids), "::bigint[]")
    if highlight is None:
        snippet = _headline(args, query)
    elif highlight:
        chosen = args.add(list(highlight), "::bigint[]")
        snippet = f"CASE WHEN c.id = ANY({chosen}) THEN {_headline(args, query)} END"
    else:
        snippet = "NULL"
    documents = ", ".join(f"d.{name}" for name in DOCUMENT_COLUMNS)
    sql = (
        f"SELECT c.id, c.ordinal, c.text, {snippet}, c.page, c.char_start, c.char_end,"  # noqa: S608
        f" {documents} FROM chunk c"
        # The join names the workspace on both sides, as a PostgreSQL sharded by workspace
        # needs to keep it on one shard (docs/operations.md, "Scaling out").
        " JOIN document d ON d.id = c.document_id AND d.workspace_id = c.workspace_id"
        f" WHERE c.workspace_id = {ws} AND c.id = ANY({wanted})"
        # A document marked for deletion keeps its chunks until its worker lets go of it.
        " AND d.delete_requested_at IS NULL"
    )
    return Statement(sql, tuple(args.values))


def _headline(args: _Args, query: str) -> str:
    """`ts_headline` of a chunk's text for `query` (any lexeme), `HEADLINE_OPTIONS`."""
    tsquery = _ANY_LEXEME.format(args.add(query))
    return f"ts_headline('english', c.text, {tsquery}, {args.add(HEADLINE_OPTIONS)})"


def snippets_statement(*, workspace_id: uuid.UUID, ids: Sequence[int], query: str) -> Statement:
    """The statement of `chunks.snippets` (columns: chunk id, `ts_headline` snippet)."""
    args = _Args()
    ws, wanted = args.add(workspace_id), args.add(list(ids), "::bigint[]")
    sql = (
        f"SELECT c.id, {_headline(args, query)} FROM chunk c"  # noqa: S608
        f" WHERE c.workspace_id = {ws} AND c.id = ANY({wanted})"
    )
    return Statement(sql, tuple(args.values))
