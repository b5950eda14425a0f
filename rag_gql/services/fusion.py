"""The ranking arithmetic of hybrid retrieval, pure functions over ranks, scores and vectors:
reciprocal rank fusion of ranked lists, and maximal-marginal-relevance re-ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reciprocal_rank_fusion(
    rankings: list[list[int]], *, weights: list[float], k: float
) -> list[tuple[int, float]]:
    """Fuses ranked id lists: score(d) = Σ wᵢ / (k + rankᵢ(d)), ranks from 1.

    Source: Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and
    individual Rank Learning Methods", SIGIR 2009 (k = 60 there). Ties keep first-seen order.
    """
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, ident in enumerate(ranking, start=1):
            scores[ident] = scores.get(ident, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def maximal_marginal_relevance(
    relevance: Sequence[float], vectors: Sequence[Sequence[float]], *, n: int, diversity: float
) -> list[int]:
    """Indexes of up to `n` candidates in maximal-marginal-relevance order.

    Carbonell and Goldstein (1998), "The use of MMR, diversity-based reranking for reordering
    documents and producing summaries": each next pick maximises
    `(1 - diversity) * rel(d) - diversity * max cos(d, s)` over the picks `s` so far, with
    `rel` the candidates' scores scaled to [0, 1] (any scale: cosine, RRF, BM25) and
    `cos` the cosine similarity of their embeddings. `diversity` 0 keeps the input order.

    Raises:
        ValueError: `relevance` and `vectors` differ in length.
    """
    if len(relevance) != len(vectors):
        raise ValueError("one relevance score per vector")
    if not relevance:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    spread = rel.max() - rel.min()
    rel = (rel - rel.min()) / spread if spread > 0 else np.ones_like(rel)
    unit = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    unit = unit / np.where(norms == 0, 1.0, norms)
    similarity = unit @ unit.T
    chosen: list[int] = []
    closest = np.full(len(rel), -np.inf)  # max similarity to the picks so far
    remaining = np.ones(len(rel), dtype=bool)
    for _ in range(min(n, len(rel))):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        gain = (1 - diversity) * rel - diversity * penalty
        gain[~remaining] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        remaining[pick] = False
        closest = np.maximum(closest, similarity[pick])
    return chosen
