"""Ranked chunk retrieval: vector (exact or HNSW, cosine), keyword (full-text), loading hits.

Every query names the workspace (and row-level security enforces it as well).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, literal, literal_column, select, text
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


class VectorStrategy(enum.Enum):
    """How `vector_ranked` found the nearest chunks."""

    EXACT = "EXACT"
    """Every chunk in scope compared with the query (recall 1.0); no index orders the rows."""
    HNSW = "HNSW"
    """The HNSW index with pgvector's iterative scan (approximate, `hnsw.ef_search`)."""


@dataclass(frozen=True, slots=True)
class VectorRanking:
    """The result of `vector_ranked`.

    `rows`: (chunk id, cosine distance in [0, 2]), nearest first, at most `limit` of them.
    `in_scope`: chunks the scope holds, counted up to `exact_max_rows` + 1 (so a value above
    `exact_max_rows` means "more than that").
    """

    rows: list[tuple[int, float]]
    strategy: VectorStrategy
    in_scope: int


async def vector_ranked(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    embedding: Sequence[float],
    limit: int,
    ef_search: int,
    exact_max_rows: int,
    scope: ChunkScope | None = None,
) -> VectorRanking:
    """Returns up to `limit` chunks of `scope` in `workspace_id` nearest to `embedding`.

    Two statements. The first sets the transaction-local settings and counts the chunks in
    scope, stopping at `exact_max_rows` + 1. When at most `exact_max_rows` are in scope, the
    second is an exact scan: it orders by `(embedding <=> q) + 0`, an expression the HNSW
    index cannot provide, so PostgreSQL computes the distance of every row in scope (found
    through the workspace or document index) and keeps the best `limit` (recall 1.0; a few
    thousand rows take a millisecond or two). Above that, it orders by `embedding <=> q`,
    which the HNSW index (`vector_cosine_ops`) serves with `hnsw.ef_search` = max(`ef_search`,
    `limit`) and pgvector 0.8's iterative scan (`relaxed_order`), so filters still return
    `limit` rows when they exist.

    `plan_cache_mode = force_custom_plan`: the driver prepares every statement, and after five
    runs PostgreSQL may settle on one generic plan for every workspace (for the SELECT: an
    exact scan of a 30 % workspace took 200 ms); a custom plan is costed for this workspace.

    `exact_max_rows` ≥ 0 (0: always HNSW unless the scope is empty); `limit` ≥ 1.
    """
    where = (scope or ChunkScope()).conditions(workspace_id)
    bounded = select(literal(1)).select_from(Chunk).where(*where).limit(exact_max_rows + 1)
    in_scope = select(func.count()).select_from(bounded.subquery()).scalar_subquery()
    # One round trip: the settings and the count (a bounded index-only scan).
    prepare = select(
        func.set_config("hnsw.ef_search", str(max(ef_search, limit)), True),
        func.set_config("hnsw.iterative_scan", "relaxed_order", True),
        func.set_config("plan_cache_mode", "force_custom_plan", True),
        in_scope,
    )
    count = int((await session.execute(prepare)).one()[3])
    strategy = VectorStrategy.EXACT if count <= exact_max_rows else VectorStrategy.HNSW
    distance = Chunk.embedding.cosine_distance(embedding)
    if strategy is VectorStrategy.EXACT:
        # The same expression in the list and the ORDER BY: computed once per row. Equal
        # distances go by id, whatever the plan (the index's order can't take a second key).
        distance = distance + literal_column("0")
        order: tuple[Any, ...] = (distance, Chunk.id)
    else:
        order = (distance,)
    stmt = select(Chunk.id, distance.label("distance")).where(*where).order_by(*order).limit(limit)
    rows = [(int(r[0]), float(r[1])) for r in (await session.execute(stmt)).all()]
    # relaxed_order may return neighbours slightly out of order; ties go by id.
    rows.sort(key=lambda row: (row[1], row[0]))
    return VectorRanking(rows, strategy, count)


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


async def embeddings(
    session: AsyncSession, *, workspace_id: uuid.UUID, ids: Sequence[int]
) -> dict[int, list[float]]:
    """The embeddings of the workspace's chunks `ids`, keyed by id."""
    if not ids:
        return {}
    stmt = select(Chunk.id, Chunk.embedding).where(
        Chunk.workspace_id == workspace_id, Chunk.id.in_(list(ids))
    )
    return {int(r[0]): list(r[1]) for r in (await session.execute(stmt)).all()}


async def load(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    ids: Sequence[int],
    query: str,
    snippets: bool = True,
) -> dict[int, ChunkRow]:
    """Returns the chunks `ids` of the workspace, keyed by id, with `ts_headline` snippets
    (empty strings when not `snippets`: highlighting is most of this query's cost)."""
    if not ids:
        return {}
    tsquery = text(_ANY_LEXEME).bindparams(query=query)
    snippet = (
        func.ts_headline("english", Chunk.text, tsquery, literal(HEADLINE_OPTIONS))
        if snippets
        else literal("")
    ).label("snippet")
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
