"""Ranked chunk retrieval: vector (HNSW, cosine), keyword (full-text), and loading hits.

Every query names the workspace (and row-level security enforces it as well).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Chunk, Document

# Questions are natural language: a chunk matches on ANY of the query's lexemes
# (`plainto_tsquery` alone ANDs every word and finds nothing for most questions).
_ANY_LEXEME = "replace(plainto_tsquery('english', :query)::text, ' & ', ' | ')::tsquery"
HEADLINE_OPTIONS = "StartSel=**, StopSel=**, MaxWords=35, MinWords=12, MaxFragments=2"


@dataclass(frozen=True, slots=True)
class ChunkScope:
    """Restricts a search; `None` fields do not restrict. Pages are 1-based, inclusive."""

    collection_ids: Sequence[uuid.UUID] | None = None
    document_ids: Sequence[uuid.UUID] | None = None
    filenames: Sequence[str] | None = None
    page_from: int | None = None
    page_to: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def conditions(self, workspace_id: uuid.UUID) -> list[ColumnElement[bool]]:
        """SQL conditions on `chunk` for this scope inside `workspace_id`."""
        where: list[ColumnElement[bool]] = [Chunk.workspace_id == workspace_id]
        if self.collection_ids is not None:
            where.append(Chunk.collection_id.in_(list(self.collection_ids)))
        if self.document_ids is not None:
            where.append(Chunk.document_id.in_(list(self.document_ids)))
        if self.page_from is not None:
            where.append(Chunk.page >= self.page_from)
        if self.page_to is not None:
            where.append(Chunk.page <= self.page_to)
        documents: list[ColumnElement[bool]] = []
        if self.filenames is not None:
            documents.append(Document.filename.in_(list(self.filenames)))
        if self.created_after is not None:
            documents.append(Document.created_at >= self.created_after)
        if self.created_before is not None:
            documents.append(Document.created_at < self.created_before)
        if documents:
            where.append(
                Chunk.document_id.in_(
                    select(Document.id).where(Document.workspace_id == workspace_id, *documents)
                )
            )
        return where


async def vector_ranked(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    embedding: Sequence[float],
    limit: int,
    ef_search: int,
    scope: ChunkScope | None = None,
) -> list[tuple[int, float]]:
    """Returns up to `limit` (chunk id, cosine distance), nearest first.

    Uses the HNSW index (`vector_cosine_ops`) with `hnsw.ef_search` ≥ `limit`, and pgvector
    0.8's iterative index scan so that filters still return `limit` rows when they exist.
    """
    # One round trip for both transaction-local settings.
    await session.execute(
        text(
            "SELECT set_config('hnsw.ef_search', :ef, true), "
            "set_config('hnsw.iterative_scan', 'relaxed_order', true)"
        ),
        {"ef": str(max(ef_search, limit))},
    )
    distance = Chunk.embedding.cosine_distance(embedding)
    stmt = (
        select(Chunk.id, distance.label("distance"))
        .where(*(scope or ChunkScope()).conditions(workspace_id))
        .order_by(distance)
        .limit(limit)
    )
    rows = [(int(r[0]), float(r[1])) for r in (await session.execute(stmt)).all()]
    # relaxed_order may return neighbours slightly out of order.
    rows.sort(key=lambda row: row[1])
    return rows


async def keyword_ranked(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    query: str,
    limit: int,
    scope: ChunkScope | None = None,
) -> list[tuple[int, float]]:
    """Returns up to `limit` (chunk id, `ts_rank_cd` score), best first.

    Full-text search on the generated `tsv` column (GIN index); a chunk matches on any lexeme
    of the query; ranked by cover density, normalized by document length (flag 1).
    """
    tsquery = text(_ANY_LEXEME).bindparams(query=query)
    rank = func.ts_rank_cd(Chunk.tsv, tsquery, 1).label("rank")
    stmt = (
        select(Chunk.id, rank)
        .where(*(scope or ChunkScope()).conditions(workspace_id))
        .where(Chunk.tsv.op("@@")(tsquery))
        .order_by(rank.desc(), Chunk.id)
        .limit(limit)
    )
    return [(int(r[0]), float(r[1])) for r in (await session.execute(stmt)).all()]


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A chunk with its document and a highlighted snippet (`**` around matches)."""

    chunk_id: int
    ordinal: int
    text: str
    snippet: str
    page: int
    char_start: int
    char_end: int
    document: Document


async def load(
    session: AsyncSession, *, workspace_id: uuid.UUID, ids: Sequence[int], query: str
) -> dict[int, ChunkRow]:
    """Returns the chunks `ids` of the workspace, keyed by id, with `ts_headline` snippets."""
    if not ids:
        return {}
    tsquery = text(_ANY_LEXEME).bindparams(query=query)
    snippet = func.ts_headline("english", Chunk.text, tsquery, literal(HEADLINE_OPTIONS)).label(
        "snippet"
    )
    stmt = (
        select(
            Chunk.id,
            Chunk.ordinal,
            Chunk.text,
            snippet,
            Chunk.page,
            Chunk.char_start,
            Chunk.char_end,
            Document,
        )
        .join(Document, Document.id == Chunk.document_id)
        .where(Chunk.workspace_id == workspace_id, Chunk.id.in_(list(ids)))
    )
    rows: dict[int, ChunkRow] = {}
    for r in (await session.execute(stmt)).all():
        rows[int(r[0])] = ChunkRow(
            chunk_id=int(r[0]),
            ordinal=int(r[1]),
            text=str(r[2]),
            snippet=str(r[3]),
            page=int(r[4]),
            char_start=int(r[5]),
            char_end=int(r[6]),
            document=r[7],
        )
    return rows
