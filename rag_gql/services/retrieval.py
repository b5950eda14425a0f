"""Search over the workspace's chunks: vector, keyword, or both fused (hybrid).

- VECTOR: cosine distance, exact for small scopes (up to `EXACT_SEARCH_MAX_ROWS` chunks, or
  a small share of a big table: `EXACT_SEARCH_MAX_SHARE`), pgvector HNSW above; `score` is
  cosine similarity.
- KEYWORD: Okapi BM25 over PostgreSQL's full-text lexemes with the workspace's statistics; a
  chunk matches on any of the query's words (`bm25.ranked`); `score` is the BM25 score.
- HYBRID: both lists fused by reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009:
  score(d) = Σ wᵢ / (k + rankᵢ(d))); `score` is the fused score. The keyword list is ranked
  while the query is embedded.

Adjacent chunks of one document that both made the list are merged into one hit, so results
are not five slices of one paragraph. With a reranker configured (`RERANK_URL`), the best
`RERANK_CANDIDATES` hits are then re-scored by it (a cross-encoder, `providers.rerank`), after
the transaction closed, and the k returned are its best; when it fails they come back in the
order above, marked `reranked=False`, and `rag_gql_reranks_total` counts why. With
`diversity`, the reranker orders maximal marginal relevance's picks. A query's embedding is
kept a while per workspace (`QueryEmbeddingCache`): the same words searched again skip the
Ollama call.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Document
from rag_gql.errors import InvalidInput, UpstreamError, UpstreamUnavailable
from rag_gql.observability.metrics import Metrics
from rag_gql.providers.breaker import CircuitOpen
from rag_gql.providers.ollama import OllamaClient
from rag_gql.providers.rerank import RerankClient
from rag_gql.repositories import bm25, chunks, search_sql
from rag_gql.repositories.chunks import ChunkRow
from rag_gql.repositories.search_sql import ChunkScope, ExactScan
from rag_gql.services.access import Action, Principal
from rag_gql.services.fusion import maximal_marginal_relevance, reciprocal_rank_fusion
from rag_gql.services.metadata import ConditionInput, check_conditions
from rag_gql.services.pgtext import replace_nul
from rag_gql.services.query_embeddings import QueryEmbeddingCache

MAX_QUERY_LENGTH = 4000
DEFAULT_K = 5
"""How many hits a search (and an answer's retrieval) returns when `k` is not given."""

MMR_POOL = 4
"""With `diversity`, maximal marginal relevance picks from the best `MMR_POOL` x k candidates."""


class SearchMode(enum.Enum):
    """How chunks are found."""

    VECTOR = "VECTOR"
    KEYWORD = "KEYWORD"
    HYBRID = "HYBRID"


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Restricts a search; `None` fields do not restrict. Ids are as clients send them: one
    that is not a UUID matches nothing; `collection_ids=[]` matches nothing. Pages are
    1-based, inclusive; `created_after` is inclusive, `created_before` exclusive. `metadata`:
    conditions on the documents' user metadata that must all hold (`services.metadata`)."""

    collection_ids: Sequence[str] | None = None
    document_ids: Sequence[str] | None = None
    filenames: Sequence[str] | None = None
    page_from: int | None = None
    page_to: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: Sequence[ConditionInput] | None = None


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """What `search`, `answer` and `ask` are asked: the query (an answer's question), `k`
    hits, the mode, a filter, `collection_ids` (narrows `filter.collection_ids`), whether to
    rerank (None: when a reranker is configured) and, for an answer, the conversation to
    follow up in (None: a new one). Checked by `RetrievalService.check`, once."""

    query: str
    k: int = DEFAULT_K
    mode: SearchMode = SearchMode.HYBRID
    filter: SearchFilter | None = None
    collection_ids: Sequence[str] | None = None
    conversation_id: uuid.UUID | None = None
    rerank: bool | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """A checked `SearchRequest` (`RetrievalService.check`): a query of 1 to
    `MAX_QUERY_LENGTH` characters without NUL, `k` in 1..SEARCH_MAX_K, the chunks' scope."""

    query: str
    k: int
    mode: SearchMode
    scope: ChunkScope | None
    conversation_id: uuid.UUID | None
    rerank: bool = False

    def rephrased(self, query: str) -> Search:
        """This search for `query` (a follow-up rewritten to stand alone, at most
        `MAX_QUERY_LENGTH` characters); an empty one keeps this search's query."""
        return replace(self, query=_clean(query)[:MAX_QUERY_LENGTH] or self.query)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A passage that matches: its score (see the module doc), ranks, text and place.

    `vector_rank` / `keyword_rank` are 1-based positions in each list (None: not in it).
    `char_start`/`char_end` index the page's normalized text. `rerank_score` is the
    reranker's score (None: not reranked); `reranked` tells whether the search's hits are in
    the reranker's order (the same for all the hits of one search).
    """

    chunk_id: int
    score: float
    text: str
    snippet: str
    page: int
    char_start: int
    char_end: int
    document: Document
    vector_rank: int | None = None
    keyword_rank: int | None = None
    ordinal: int = 0
    last_ordinal: int | None = None  # a merged hit's last chunk (None: just `ordinal`)
    rerank_score: float | None = None
    reranked: bool = False

    @property
    def ordinals(self) -> tuple[int, int]:
        """The first and last chunk ordinals this hit covers."""
        return self.ordinal, self.ordinal if self.last_ordinal is None else self.last_ordinal


class RetrievalService:
    """Finds the chunks of the caller's workspace that best match a query."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        ollama: OllamaClient,
        reranker: RerankClient | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._ollama = ollama
        self._reranker = reranker
        self._metrics = metrics or Metrics()
        self._exact = ExactScan(
            settings.exact_search_max_rows,
            settings.exact_search_max_share,
            settings.exact_search_share_max_rows,
        )
        self._queries = QueryEmbeddingCache(
            settings.query_embedding_cache_size, settings.query_embedding_cache_ttl
        )

    def check(self, request: SearchRequest, *, what: str = "query") -> Search:
        """`request`, checked: NUL characters become spaces (PostgreSQL text cannot hold
        them; page texts drop them too, `normalize_page`), the query is stripped, the scope
        built (`collection_ids` narrows `filter.collection_ids`).

        Raises:
            InvalidInput: empty or over-long query (called `what` in the message), `k`
                outside 1..SEARCH_MAX_K, `rerank` asked for where no reranker is configured, a
                bad metadata condition (`check_conditions`).
        """
        query = _clean(request.query)
        if not query:
            raise InvalidInput(f"The {what} is empty")
        if len(query) > MAX_QUERY_LENGTH:
            raise InvalidInput(f"The {what} is longer than {MAX_QUERY_LENGTH} characters")
        if not 1 <= request.k <= self._settings.search_max_k:
            raise InvalidInput(f"k must be between 1 and {self._settings.search_max_k}")
        if request.rerank and self._reranker is None:
            raise InvalidInput("rerank: no reranker is configured on this server (RERANK_URL)")
        rerank = self._reranker is not None and request.rerank is not False
        return Search(
            query=query,
            k=request.k,
            mode=request.mode,
            scope=_scope(request.filter, request.collection_ids),
            conversation_id=request.conversation_id,
            rerank=rerank,
        )

    async def search(
        self,
        principal: Principal,
        request: SearchRequest,
        *,
        diversity: float = 0.0,
        snippets: bool = True,
    ) -> list[SearchHit]:
        """Returns up to `request.k` hits for `request.query`, best first, within its scope.

        With `diversity` in (0, 1], the hits are re-ranked by maximal marginal relevance
        (`maximal_marginal_relevance`) among the best `MMR_POOL` x k candidates: 0 keeps the
        plain ranking, higher values trade relevance for hits unlike those above them.
        Without `snippets`, hits carry empty snippets (no `ts_headline`).

        Raises:
            Forbidden: the caller cannot read.
            InvalidInput: what `check` raises; `diversity` outside 0..1.
            UpstreamUnavailable, UpstreamError: the query could not be embedded.
        """
        principal.require(Action.READ)
        search = self.check(request)
        if not 0.0 <= diversity <= 1.0:
            raise InvalidInput("diversity must be between 0 and 1")
        return await self.retrieve(principal, search, diversity=diversity, snippets=snippets)

    async def retrieve(
        self,
        principal: Principal,
        search: Search,
        *,
        diversity: float = 0.0,
        snippets: bool = True,
    ) -> list[SearchHit]:
        """`search` for a checked search (`check`): the hits, best first.

        Raises:
            Forbidden: the caller cannot read.
            UpstreamUnavailable, UpstreamError: the query could not be embedded.
        """
        principal.require(Action.READ)
        query, k, mode, scope = search.query, search.k, search.mode, search.scope
        s = self._settings
        depth = candidate_depth(mode, k, hybrid_candidates=s.hybrid_candidates, diversity=diversity)
        # Reranking: the best `keep` merged hits go to the reranker, highlighted after it.
        rerank = search.rerank and self._reranker is not None
        keep = max(k, s.rerank_candidates) if rerank else k
        depth = max(depth, keep) if rerank else depth
        ws = principal.workspace_id
        vector = None if mode is SearchMode.KEYWORD else self._queries.get(ws, query)
        by_keyword: list[tuple[int, float]] | None = None
        if mode is SearchMode.VECTOR and vector is None:
            vector = await self._embed(ws, query)
        elif mode is SearchMode.HYBRID and vector is None:
            vector, by_keyword = await self._embed_beside_keywords(ws, query, depth, scope)
        # The transaction opens after the Ollama call: nothing holds a connection across it.
        async with self._db.driver_transaction(ws) as conn:
            by_vector: list[tuple[int, float]] = []
            if vector is not None:
                statements = search_sql.vector_statements(
                    workspace_id=ws,
                    embedding=vector,
                    limit=depth,
                    ef_search=s.hnsw_ef_search,
                    exact=self._exact,
                    scope=scope,
                )
                ranking = await chunks.vector_ranked(conn, statements)
                by_vector = ranking.rows
            if mode is not SearchMode.VECTOR and by_keyword is None:
                by_keyword = await self._keyword_ranked(conn, ws, query, depth, scope)
            ranked = _rank(mode, by_vector, by_keyword or [], s)
            if diversity > 0 and len(ranked) > 1:
                pool = ranked[: k * MMR_POOL]
                stored = await chunks.embeddings(
                    conn, workspace_id=ws, ids=[cid for cid, *_ in pool]
                )
                pool = [entry for entry in pool if entry[0] in stored]
                order = maximal_marginal_relevance(
                    [score for _, score, *_ in pool],
                    [stored[cid] for cid, *_ in pool],
                    n=k * 2,
                    diversity=diversity,
                )
                ranked = [pool[i] for i in order]
            # Load twice k for the merge; highlight (the costly part) the first k, and
            # afterwards any other chunk a returned hit is.
            top = ranked[: keep * 2]
            ids = [cid for cid, *_ in top]
            highlight = ids[:k] if snippets and not rerank else []
            rows = await chunks.load(
                conn, workspace_id=ws, ids=ids, query=query, highlight=highlight
            )
            hits = merge_adjacent(
                [
                    _hit(rows[cid], score, v_rank, k_rank)
                    for cid, score, v_rank, k_rank in top
                    if cid in rows
                ]
            )[:keep]
            late = [hit.chunk_id for hit in hits if rows[hit.chunk_id].snippet is None]
            if snippets and late and not rerank:
                found = await chunks.snippets(conn, workspace_id=ws, ids=late, query=query)
                hits = [
                    replace(hit, snippet=found[hit.chunk_id]) if hit.chunk_id in found else hit
                    for hit in hits
                ]
        if rerank:
            hits = await self._rerank(query, hits, k)
            if snippets and hits:
                async with self._db.driver_transaction(ws) as conn:
                    found = await chunks.snippets(
                        conn, workspace_id=ws, ids=[hit.chunk_id for hit in hits], query=query
                    )
                hits = [replace(hit, snippet=found.get(hit.chunk_id, hit.snippet)) for hit in hits]
        return hits

    async def _rerank(self, query: str, hits: list[SearchHit], k: int) -> list[SearchHit]:
        """The best `k` of `hits` by the reranker's scores, `reranked`; when it fails (counted
        in `rag_gql_reranks_total`), the first `k` in their order, not reranked."""
        assert self._reranker is not None
        if not hits:
            return hits
        try:
            ranked = await self._reranker.rerank(query, [hit.text for hit in hits], top_n=k)
        except CircuitOpen:
            self._metrics.rerank("circuit_open")
        except UpstreamUnavailable:
            self._metrics.rerank("unavailable")
        except UpstreamError:
            self._metrics.rerank("error")
        else:
            self._metrics.rerank("ok")
            return [replace(hits[r.index], rerank_score=r.score, reranked=True) for r in ranked]
        return hits[:k]

    async def _embed(self, workspace_id: uuid.UUID, query: str) -> list[float]:
        """The query's embedding from Ollama, kept for the next search of the same words."""
        (vector,) = await self._ollama.embed([query])
        self._queries.put(workspace_id, query, vector)
        return vector

    async def _keyword_ranked(
        self,
        conn: asyncpg.Connection,
        workspace_id: uuid.UUID,
        query: str,
        depth: int,
        scope: ChunkScope | None,
    ) -> list[tuple[int, float]]:
        """`bm25.ranked` with this service's `BM25_K1` and `BM25_B`."""
        s = self._settings
        return await bm25.ranked(
            conn,
            workspace_id=workspace_id,
            query=query,
            limit=depth,
            k1=s.bm25_k1,
            b=s.bm25_b,
            scope=scope,
        )

    async def _embed_beside_keywords(
        self, workspace_id: uuid.UUID, query: str, depth: int, scope: ChunkScope | None
    ) -> tuple[list[float], list[tuple[int, float]]]:
        """Embeds `query` while its keyword ranking runs in a transaction of its own, so a
        hybrid search waits for the longer of the two instead of their sum. Returns the
        query vector and the keyword ranking ((chunk id, rank), best first).

        Raises: what `OllamaClient.embed` and `bm25.ranked` raise; when the
        embedding fails, the keyword ranking is cancelled first. (A query whose embedding is
        kept, `QueryEmbeddingCache`, is ranked by keyword in the search's one transaction.)
        """

        async def keyword_ranking() -> list[tuple[int, float]]:
            async with self._db.driver_transaction(workspace_id) as conn:
                return await self._keyword_ranked(conn, workspace_id, query, depth, scope)

        keywords = asyncio.create_task(keyword_ranking())
        try:
            vector = await self._embed(workspace_id, query)
        except BaseException:
            keywords.cancel()
            await asyncio.wait([keywords])
            if not keywords.cancelled():
                keywords.exception()  # retrieved: the embedding's failure is the one raised
            raise
        return vector, await keywords


def _clean(query: str) -> str:
    return replace_nul(query, " ").strip()


def _scope(filter: SearchFilter | None, collection_ids: Sequence[str] | None) -> ChunkScope | None:
    """The chunks' scope of a filter; top-level `collection_ids` narrows
    `filter.collection_ids`."""
    if filter is None and collection_ids is None:
        return None
    f = filter or SearchFilter()
    collections = _ids(f.collection_ids)
    if collection_ids is not None:
        top = _ids(collection_ids) or []
        collections = top if collections is None else [c for c in collections if c in top]
    return ChunkScope(
        collection_ids=collections,
        document_ids=_ids(f.document_ids),
        # Stored names have no control characters (`clean_filename`), and PostgreSQL text
        # cannot hold NUL: such a name matches nothing.
        filenames=None
        if f.filenames is None
        else [name for name in f.filenames if name.isprintable()],
        page_from=f.page_from,
        page_to=f.page_to,
        created_after=f.created_after,
        created_before=f.created_before,
        metadata=None if not f.metadata else check_conditions(f.metadata),
    )


def _ids(values: Sequence[str] | None) -> list[uuid.UUID] | None:
    """Parses ids; one that is not an id matches nothing (it is left out)."""
    if values is None:
        return None
    parsed: list[uuid.UUID] = []
    for value in values:
        try:
            parsed.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return parsed


def candidate_depth(
    mode: SearchMode, k: int, *, hybrid_candidates: int, diversity: float = 0.0
) -> int:
    """How many chunks each ranked list fetches for `k` hits: 2k, so that hits merged with a
    neighbour (`merge_adjacent`) still leave k; at least `hybrid_candidates` per list for
    HYBRID (fusion needs depth); at least `MMR_POOL` x k with `diversity`."""
    depth = k * 2 if mode is not SearchMode.HYBRID else max(k * 2, hybrid_candidates)
    return max(depth, k * MMR_POOL) if diversity > 0 else depth


def _rank(
    mode: SearchMode,
    by_vector: list[tuple[int, float]],
    by_keyword: list[tuple[int, float]],
    s: Settings,
) -> list[tuple[int, float, int | None, int | None]]:
    """(chunk id, score, vector rank, keyword rank), best first."""
    v_rank = {cid: i for i, (cid, _) in enumerate(by_vector, start=1)}
    k_rank = {cid: i for i, (cid, _) in enumerate(by_keyword, start=1)}
    if mode is SearchMode.VECTOR:
        return [(cid, 1.0 - d, v_rank[cid], None) for cid, d in by_vector]
    if mode is SearchMode.KEYWORD:
        return [(cid, r, None, k_rank[cid]) for cid, r in by_keyword]
    fused = reciprocal_rank_fusion(
        [[cid for cid, _ in by_vector], [cid for cid, _ in by_keyword]],
        weights=[s.hybrid_vector_weight, s.hybrid_keyword_weight],
        k=s.rrf_k,
    )
    return [(cid, score, v_rank.get(cid), k_rank.get(cid)) for cid, score in fused]


def _hit(row: ChunkRow, score: float, v_rank: int | None, k_rank: int | None) -> SearchHit:
    return SearchHit(
        chunk_id=row.chunk_id,
        score=score,
        text=row.text,
        snippet=row.snippet or "",
        page=row.page,
        char_start=row.char_start,
        char_end=row.char_end,
        document=row.document,
        vector_rank=v_rank,
        keyword_rank=k_rank,
        ordinal=row.ordinal,
    )


def merge_adjacent(hits: list[SearchHit]) -> list[SearchHit]:
    """Merges hits that are consecutive chunks of one page of one document into the better one.

    The merged hit spans both (its text de-duplicates their overlap), keeps the better score
    and the best rank of each list, and takes the better hit's place in the order.
    """
    merged: list[SearchHit] = []
    for hit in hits:
        touching = [i for i, kept in enumerate(merged) if _touches(kept, hit)]
        if not touching:
            merged.append(hit)
            continue
        # The hit may bridge two runs kept so far: fold them all into the best-placed one.
        joined = _join(merged[touching[0]], hit)
        for i in touching[1:]:
            joined = _join(joined, merged[i])
        merged[touching[0]] = joined
        for i in reversed(touching[1:]):
            del merged[i]
    return merged


def _touches(a: SearchHit, b: SearchHit) -> bool:
    """Same page of one document, and chunk ranges that overlap or are consecutive."""
    if a.document.id != b.document.id or a.page != b.page:
        return False
    (a_first, a_last), (b_first, b_last) = a.ordinals, b.ordinals
    return b_first <= a_last + 1 and a_first <= b_last + 1


def _join(best: SearchHit, other: SearchHit) -> SearchHit:
    first, second = (best, other) if best.char_start <= other.char_start else (other, best)
    overlap = max(0, first.char_end - second.char_start)
    text = first.text + second.text[overlap:] if overlap else f"{first.text} {second.text}"
    return replace(
        best,
        text=text,
        char_start=first.char_start,
        char_end=max(first.char_end, second.char_end),
        snippet=best.snippet,
        vector_rank=_best_rank(best.vector_rank, other.vector_rank),
        keyword_rank=_best_rank(best.keyword_rank, other.keyword_rank),
        ordinal=min(best.ordinal, other.ordinal),
        last_ordinal=max(best.ordinals[1], other.ordinals[1]),
    )


def _best_rank(a: int | None, b: int | None) -> int | None:
    ranks = [r for r in (a, b) if r is not None]
    return min(ranks) if ranks else None
