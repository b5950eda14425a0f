"""Pure functions of hybrid retrieval: reciprocal rank fusion and the merging of adjacent chunks."""

from __future__ import annotations

import itertools
import math
import uuid

import pytest

from rag_gql.db.models import Document
from rag_gql.services.chunking import ChunkSpan, chunk_pages, normalize_page
from rag_gql.services.fusion import maximal_marginal_relevance, reciprocal_rank_fusion
from rag_gql.services.retrieval import SearchHit, merge_adjacent

# --------------------------------------------------------------------------------------------
# reciprocal_rank_fusion
# --------------------------------------------------------------------------------------------


def rrf(rankings: list[list[int]], weights: list[float], k: float = 60.0) -> dict[int, float]:
    """The formula itself, score(d) = Σ wᵢ / (k + rankᵢ(d)), ranks from 1."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, ident in enumerate(ranking, start=1):
            scores[ident] = scores.get(ident, 0.0) + weight / (k + rank)
    return scores


def test_rrf_scores_follow_the_formula() -> None:
    vector = [10, 20, 30, 40]
    keyword = [30, 50, 10]
    fused = reciprocal_rank_fusion([vector, keyword], weights=[1.0, 1.0], k=60)
    scores = dict(fused)
    assert set(scores) == {10, 20, 30, 40, 50}, "the union of both lists"
    assert math.isclose(scores[10], 1 / 61 + 1 / 63)
    assert math.isclose(scores[30], 1 / 63 + 1 / 61)
    assert math.isclose(scores[20], 1 / 62)
    assert math.isclose(scores[50], 1 / 62)
    assert math.isclose(scores[40], 1 / 64)
    for ident, score in fused:
        assert math.isclose(score, rrf([vector, keyword], [1.0, 1.0])[ident])
    assert [s for _, s in fused] == sorted((s for _, s in fused), reverse=True)
    # In both lists beats either list alone; ties keep the order ids were first seen in.
    assert [ident for ident, _ in fused] == [10, 30, 20, 50, 40]


def test_rrf_single_list_keeps_its_order() -> None:
    fused = reciprocal_rank_fusion([[7, 3, 9]], weights=[1.0], k=60)
    assert fused == [(7, 1 / 61), (3, 1 / 62), (9, 1 / 63)]
    assert reciprocal_rank_fusion([], weights=[], k=60) == []
    assert reciprocal_rank_fusion([[], []], weights=[1.0, 1.0], k=60) == []


def test_rrf_weights_scale_each_list() -> None:
    vector, keyword = [1, 2], [2, 1]
    equal = reciprocal_rank_fusion([vector, keyword], weights=[1.0, 1.0], k=60)
    assert math.isclose(equal[0][1], equal[1][1]), "mirror-image lists tie"
    assert [ident for ident, _ in equal] == [1, 2], "a tie keeps first-seen order"

    favour_keyword = dict(reciprocal_rank_fusion([vector, keyword], weights=[1.0, 2.0], k=60))
    assert math.isclose(favour_keyword[2], 1 / 61 * 2 + 1 / 62)
    assert math.isclose(favour_keyword[1], 1 / 61 + 2 / 62)
    assert favour_keyword[2] > favour_keyword[1]
    ranked = reciprocal_rank_fusion([vector, keyword], weights=[1.0, 2.0], k=60)
    assert [ident for ident, _ in ranked] == [2, 1]

    # Weight 0 turns a list off: the order is the other list's, its own ids score 0.
    off = reciprocal_rank_fusion([[1, 2, 3], [3, 4]], weights=[1.0, 0.0], k=60)
    assert [ident for ident, _ in off] == [1, 2, 3, 4]
    assert dict(off)[4] == 0.0 and math.isclose(dict(off)[3], 1 / 63)


def test_rrf_k_sets_how_much_the_top_ranks_count() -> None:
    # 1 is first in one list only; 2 is third in both.
    rankings = [[1, 5, 2], [6, 7, 2]]
    weights = [1.0, 1.0]
    assert reciprocal_rank_fusion(rankings, weights=weights, k=60)[0][0] == 2
    assert reciprocal_rank_fusion(rankings, weights=weights, k=0.5)[0][0] == 1
    at_one = dict(reciprocal_rank_fusion(rankings, weights=weights, k=1))
    assert math.isclose(at_one[1], at_one[2]), "1/(1+1) == 2/(1+3)"
    assert [i for i, _ in reciprocal_rank_fusion(rankings, weights=weights, k=1)][:2] == [1, 2]


def test_rrf_ties_keep_first_seen_order() -> None:
    # Every id is at one rank in exactly one list: pairs tie, first seen wins.
    fused = reciprocal_rank_fusion([[1, 2], [3, 4]], weights=[1.0, 1.0], k=60)
    assert [ident for ident, _ in fused] == [1, 3, 2, 4]
    fused = reciprocal_rank_fusion([[3, 4], [1, 2]], weights=[1.0, 1.0], k=60)
    assert [ident for ident, _ in fused] == [3, 1, 4, 2]


def test_rrf_needs_one_weight_per_list() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1], [2]], weights=[1.0], k=60)
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=[1.0, 1.0], k=60)


# --------------------------------------------------------------------------------------------
# merge_adjacent
# --------------------------------------------------------------------------------------------

DOC = Document(id=uuid.uuid4(), filename="notes.pdf")
OTHER_DOC = Document(id=uuid.uuid4(), filename="other.pdf")
PAGE = " ".join(f"Sentence {i} tells of the {i}th lighthouse keeper." for i in range(40))
TEXT = normalize_page(PAGE)
SPANS = chunk_pages([PAGE], size=400, overlap=60)


def hit(
    ordinal: int,
    score: float = 0.5,
    *,
    spans: list[ChunkSpan] = SPANS,
    document: Document = DOC,
    page: int = 1,
    vector_rank: int | None = None,
    keyword_rank: int | None = None,
) -> SearchHit:
    """A hit for chunk `ordinal` of the chunked PAGE."""
    span = spans[ordinal]
    return SearchHit(
        chunk_id=1000 + ordinal,
        score=score,
        text=span.text,
        snippet=f"snippet {ordinal}",
        page=page,
        char_start=span.char_start,
        char_end=span.char_end,
        document=document,
        vector_rank=vector_rank,
        keyword_rank=keyword_rank,
        ordinal=ordinal,
    )


def test_the_page_chunks_overlap() -> None:
    assert len(SPANS) >= 5
    for a, b in itertools.pairwise(SPANS):
        assert a.char_end > b.char_start, "consecutive chunks overlap"
        assert TEXT[a.char_start : a.char_end] == a.text


def test_two_consecutive_chunks_become_one_hit() -> None:
    better = hit(2, 0.9, vector_rank=3, keyword_rank=None)
    worse = hit(1, 0.4, vector_rank=1, keyword_rank=2)
    (merged,) = merge_adjacent([better, worse])
    one, two = SPANS[1], SPANS[2]
    assert (merged.char_start, merged.char_end) == (one.char_start, two.char_end)
    assert merged.text == TEXT[one.char_start : two.char_end], "overlap once, page order"
    assert len(merged.text) < len(one.text) + len(two.text)
    # The better hit's score, id and snippet; the best rank of each list; the first ordinal.
    assert (merged.score, merged.chunk_id, merged.snippet) == (0.9, 1002, "snippet 2")
    assert (merged.vector_rank, merged.keyword_rank) == (1, 2)
    assert merged.ordinal == 1
    # Order of arrival does not change the span or the text.
    (again,) = merge_adjacent([hit(1, 0.9), hit(2, 0.4)])
    assert (again.char_start, again.char_end, again.text) == (
        merged.char_start,
        merged.char_end,
        merged.text,
    )


def test_merged_hit_keeps_the_better_hits_place() -> None:
    hits = [hit(0, 0.9), hit(3, 0.8), hit(4, 0.7), hit(1, 0.6)]
    merged = merge_adjacent(hits)
    assert [(h.score, h.char_start, h.char_end) for h in merged] == [
        (0.9, SPANS[0].char_start, SPANS[1].char_end),
        (0.8, SPANS[3].char_start, SPANS[4].char_end),
    ]


@pytest.mark.parametrize(
    "hits",
    [
        pytest.param([hit(1), hit(3)], id="one chunk apart"),
        pytest.param([hit(1), hit(2, page=2)], id="another page"),
        pytest.param([hit(1), hit(2, document=OTHER_DOC)], id="another document"),
        pytest.param([hit(2), hit(2, document=OTHER_DOC)], id="same ordinal elsewhere"),
    ],
)
def test_only_consecutive_chunks_of_one_page_merge(hits: list[SearchHit]) -> None:
    assert merge_adjacent(hits) == hits
    assert merge_adjacent([]) == []


def test_consecutive_chunks_without_overlap_join_with_a_space() -> None:
    spans = [
        ChunkSpan(page=1, char_start=0, char_end=11, text="first chunk"),
        ChunkSpan(page=1, char_start=12, char_end=24, text="second chunk"),
    ]
    (merged,) = merge_adjacent([hit(1, spans=spans), hit(0, spans=spans)])
    assert merged.text == "first chunk second chunk"
    assert (merged.char_start, merged.char_end) == (0, 24)


RUN_OF_THREE = [
    pytest.param((2, 1, 0), id="best last"),
    pytest.param((1, 2, 0), id="middle, right, left"),
    pytest.param((0, 1, 2), id="in page order"),
    pytest.param((1, 0, 2), id="middle, left, right"),
    pytest.param((0, 2, 1), id="ends first"),
    pytest.param((2, 0, 1), id="ends first, reversed"),
]


@pytest.mark.parametrize("order", RUN_OF_THREE)
def test_a_run_of_three_chunks_becomes_one_hit(order: tuple[int, int, int]) -> None:
    hits = [hit(2 + i, 1.0 - n / 10) for n, i in enumerate(order)]
    (merged,) = merge_adjacent(hits)
    assert (merged.char_start, merged.char_end) == (SPANS[2].char_start, SPANS[4].char_end)
    assert merged.text == TEXT[SPANS[2].char_start : SPANS[4].char_end]
    assert merged.score == 1.0


def test_maximal_marginal_relevance_trades_relevance_for_novelty() -> None:
    # Three near-copies (the most relevant) and one different passage (a little less).
    same = [1.0, 0.0, 0.0]
    vectors = [same, same, [0.99, 0.14, 0.0], [0.0, 1.0, 0.0]]
    relevance = [0.90, 0.89, 0.88, 0.80]
    assert maximal_marginal_relevance(relevance, vectors, n=4, diversity=0.0) == [0, 1, 2, 3]
    assert maximal_marginal_relevance(relevance, vectors, n=2, diversity=0.5) == [0, 3]
    # Any scale of scores: only their order and spread matter.
    scaled = [r * 100 for r in relevance]
    assert maximal_marginal_relevance(scaled, vectors, n=2, diversity=0.5) == [0, 3]
    assert maximal_marginal_relevance([], [], n=3, diversity=0.5) == []
    with pytest.raises(ValueError, match="one relevance score per vector"):
        maximal_marginal_relevance([1.0], [], n=1, diversity=0.5)
