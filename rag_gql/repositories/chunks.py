"""Chunks: their writes (a document's, in its ingestion's transaction) and the search's reads.

Every statement names the workspace; row-level security on `chunk` enforces it as well.
Writes go through the ORM session of the caller's transaction (`COPY` on its connection).
The search's reads run on an asyncpg connection inside
`Database.driver_transaction(workspace_id)`, as the text `search_sql` builds: the search's
hot path skips the ORM.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import configure_mappers

from rag_gql.db.models import Chunk, Document
from rag_gql.repositories import search_sql


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk to write (`copy_chunks`): its place in its document (`ordinal`, 0-based;
    `page`, 1-based; `char_start`/`char_end`, a span of the page's text), its embedding
    (the column's dimension) and its `context` prefix (`services/context.py`; "" for none).

    The keyword text of a chunk is `context` then `text`: the `tsv` column is generated from
    both (`models.KEYWORD_TEXT_TSVECTOR`), so anything computed from a chunk's lexemes reads
    `tsv` and sees the prefix. The embedding's input is `embedding_input(context, text)` (the
    context left out with CONTEXT_PREFIX=keyword)."""

    workspace_id: uuid.UUID
    document_id: uuid.UUID
    collection_id: uuid.UUID | None
    ordinal: int
    page: int
    char_start: int
    char_end: int
    text: str
    embedding: Sequence[float]
    context: str = ""


def embedding_input(context: str, text: str) -> str:
    """What is embedded for a chunk: its context prefix, a blank line, its passage (just
    the passage without a prefix)."""
    return f"{context}\n\n{text}" if context else text


CHUNK_COLUMNS = tuple(field.name for field in dataclasses.fields(ChunkRecord))
"""The `chunk` columns `copy_chunks` writes, in `ChunkRecord`'s order: the one list of them."""

_STAGE = "chunk_stage"
_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it unannotated


def _staging_type(column: str) -> str:
    """The staging table's type of a `CHUNK_COLUMNS` column: the chunk's own, but the
    embedding as text (pgvector's text form, cast when moved into `chunk`)."""
    if column == "embedding":
        return "text"
    return str(Chunk.__table__.c[column].type.compile(dialect=_POSTGRESQL))


async def delete_chunks(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> None:
    """Deletes a document's chunks (before writing new ones in the same transaction)."""
    await session.execute(
        delete(Chunk).where(Chunk.workspace_id == workspace_id, Chunk.document_id == document_id)
    )


async def copy_chunks(session: AsyncSession, records: Sequence[ChunkRecord]) -> None:
    """Writes chunk rows with `COPY` (binary), in the caller's transaction.

    PostgreSQL refuses `COPY FROM` into a table with row-level security, so the rows are
    copied into a temporary staging table (created on first use, dropped at commit) and moved
    with one `INSERT ... SELECT`, which the policies check. Embeddings travel as pgvector's
    text form (`[0.1,0.2,...]`, `vector_text`), cheaper to send than asyncpg's `real[]`
    encoding (bench/README.md).
    """
    if not records:
        return
    connection = await session.connection()
    staging = ", ".join(f"{column} {_staging_type(column)}" for column in CHUNK_COLUMNS)
    await connection.execute(
        text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ({staging}) ON COMMIT DROP")
    )
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    rows = [
        tuple(
            vector_text(record.embedding) if column == "embedding" else getattr(record, column)
            for column in CHUNK_COLUMNS
        )
        for record in records
    ]
    await driver.copy_records_to_table(_STAGE, records=rows, columns=CHUNK_COLUMNS)
    columns = ", ".join(CHUNK_COLUMNS)
    moved = ", ".join(
        f"{column}::vector" if column == "embedding" else column for column in CHUNK_COLUMNS
    )
    await connection.execute(
        text(
            f"INSERT INTO chunk ({columns}) SELECT {moved}"  # noqa: S608 - constants
            f" FROM {_STAGE} ORDER BY ordinal"
        )
    )
    await connection.execute(text(f"TRUNCATE {_STAGE}"))


def vector_text(vector: Sequence[float]) -> str:
    """pgvector's text input form of a vector: `[0.5,-1.25,...]`."""
    return "[" + ",".join(map(repr, vector)) + "]"


async def chunk_texts(
    session: AsyncSession, *, workspace_id: uuid.UUID, document_id: uuid.UUID
) -> list[tuple[int, str, str]]:
    """`(chunk id, context, text)` of a document's chunks, in order."""
    stmt = (
        select(Chunk.id, Chunk.context, Chunk.text)
        .where(Chunk.workspace_id == workspace_id, Chunk.document_id == document_id)
        .order_by(Chunk.ordinal)
    )
    return [(row.id, row.context, row.text) for row in await session.execute(stmt)]


async def set_embeddings(session: AsyncSession, rows: Sequence[tuple[int, list[float]]]) -> None:
    """Replaces the embeddings of chunks `(id, vector)` (row-level security scopes them)."""
    if rows:
        await session.execute(
            update(Chunk),
            [{"id": chunk_id, "embedding": vector} for chunk_id, vector in rows],
        )


@dataclass(frozen=True, slots=True)
class VectorRanking:
    """The result of `vector_ranked`.

    `rows`: (chunk id, cosine distance in [0, 2]), nearest first, at most `limit` of them.
    `threshold`: the most chunks in scope searched exactly (`search_sql.ExactScan.threshold`).
    `in_scope`: chunks the scope holds, counted up to `threshold` + 1 (so a value above
    `threshold` means "more than that").
    """

    rows: list[tuple[int, float]]
    strategy: search_sql.VectorStrategy
    in_scope: int
    threshold: int


async def vector_ranked(
    conn: asyncpg.Connection, statements: search_sql.VectorStatements
) -> VectorRanking:
    """Runs `statements` (`search_sql.vector_statements`): the count, then the SELECT it picks.

    `conn` is in `Database.driver_transaction(workspace_id)` of the statements' workspace.
    """
    prepared = await conn.fetchrow(statements.prepare.sql, *statements.prepare.args)
    threshold, count = int(prepared[3]), int(prepared[4])
    strategy = statements.choose(count, threshold)
    select = statements.select(strategy)
    rows = [(int(r[0]), float(r[1])) for r in await conn.fetch(select.sql, *select.args)]
    # relaxed_order may return neighbours slightly out of order; ties go by id.
    rows.sort(key=lambda row: (row[1], row[0]))
    return VectorRanking(rows, strategy, count, threshold)


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A chunk with its document and a highlighted snippet (`**` around matches; None: not
    highlighted)."""

    chunk_id: int
    ordinal: int
    text: str
    snippet: str | None
    page: int
    char_start: int
    char_end: int
    document: Document


async def embeddings(
    conn: asyncpg.Connection, *, workspace_id: uuid.UUID, ids: Sequence[int]
) -> dict[int, list[float]]:
    """The embeddings of the workspace's chunks `ids`, keyed by id."""
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT c.id, c.embedding::real[] FROM chunk c"
        " WHERE c.workspace_id = $1 AND c.id = ANY($2::bigint[])",
        workspace_id,
        list(ids),
    )
    return {int(r[0]): list(r[1]) for r in rows}


async def load(
    conn: asyncpg.Connection,
    *,
    workspace_id: uuid.UUID,
    ids: Sequence[int],
    query: str,
    highlight: Sequence[int] | None = None,
) -> dict[int, ChunkRow]:
    """Returns the chunks `ids` of the workspace, keyed by id. Those in `highlight` (None:
    all) carry a `ts_headline` snippet, the others None: highlighting is most of this
    query's cost, so callers highlight only the chunks they return (`snippets` for any more).
    Each row's `document` is a `Document` built from the row, in no session."""
    if not ids:
        return {}
    statement = search_sql.load_statement(
        workspace_id=workspace_id, ids=ids, query=query, highlight=highlight
    )
    rows: dict[int, ChunkRow] = {}
    documents: dict[uuid.UUID, Document] = {}
    for r in await conn.fetch(statement.sql, *statement.args):
        values = tuple(r[7:])
        document = documents.get(values[0])
        if document is None:
            document = _document(values)
            documents[values[0]] = document
        rows[int(r[0])] = ChunkRow(
            chunk_id=int(r[0]),
            ordinal=int(r[1]),
            text=str(r[2]),
            snippet=None if r[3] is None else str(r[3]),
            page=int(r[4]),
            char_start=int(r[5]),
            char_end=int(r[6]),
            document=document,
        )
    return rows


async def snippets(
    conn: asyncpg.Connection, *, workspace_id: uuid.UUID, ids: Sequence[int], query: str
) -> dict[int, str]:
    """`ts_headline` snippets of the workspace's chunks `ids` for `query`, keyed by id."""
    if not ids:
        return {}
    statement = search_sql.snippets_statement(workspace_id=workspace_id, ids=ids, query=query)
    return {int(r[0]): str(r[1]) for r in await conn.fetch(statement.sql, *statement.args)}


def _document(values: Sequence[Any]) -> Document:
    """A detached `Document` of one row's columns (`search_sql.DOCUMENT_COLUMNS` order).

    Filled as SQLAlchemy's own loader fills instances (a new instance, then its `__dict__`),
    not through the declarative constructor, which sets each attribute through
    instrumentation. Unlike the constructor, `new_instance` does not configure the mappers,
    so this does first: a document built before they are configured has unreadable
    attributes.
    """
    configure_mappers()  # a no-op once done; a fresh process may reach here first
    document: Document = Document.__mapper__.class_manager.new_instance()
    document.__dict__.update(zip(search_sql.DOCUMENT_ATTRIBUTES, values, strict=True))
    if isinstance(document.meta, str):  # jsonb as text: SQLAlchemy's codec on the connection
        document.__dict__["meta"] = json.loads(document.meta)
    return document


async def workspace_chunks(session: AsyncSession, workspace_id: uuid.UUID) -> Sequence[Any]:
    """Every chunk of the workspace as rows of (filename, page, text, embedding), in chunk id
    order (`rag-gql eval`'s baseline reads the chunks rag-gql stored)."""
    statement = (
        select(Document.filename, Chunk.page, Chunk.text, Chunk.embedding)
        .join(Document, Document.id == Chunk.document_id)
        .where(Chunk.workspace_id == workspace_id)
        .order_by(Chunk.id)
    )
    return (await session.execute(statement)).all()
