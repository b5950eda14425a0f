"""Retrieval metrics at page level, for `rag-gql eval`: pure functions, no I/O.

A question names one document and the 1-based pages that answer it; a search hit is relevant
when its document's filename and its page are among them. A ranking is the hits' pages,
best first: `[("calc.pdf", 3), ("calc.pdf", 4), ...]` (a page may repeat: several hits can
come from one page).

Example:
    >>> ranking = [("a.pdf", 2), ("b.pdf", 1), ("a.pdf", 1)]
    >>> reciprocal_rank(ranking, {("a.pdf", 1)}, k=10)
    0.3333333333333333
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Page = tuple[str, int]
"""(document filename, 1-based page number)."""


@dataclass(frozen=True, slots=True)
class Question:
    """A labelled question: the pages of `document` that answer it, and an optional `kind`."""

    text: str
    document: str
    pages: tuple[int, ...]
    kind: str | None = None

    @property
    def relevant(self) -> frozenset[Page]:
        """The relevant pages."""
        return frozenset((self.document, page) for page in self.pages)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one search returned for one question, and how long it took (milliseconds)."""

    question: Question
    ranking: tuple[Page, ...]
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Scores:
    """One mode's metrics, each a mean over the questions; latencies in milliseconds."""

    mode: str
    questions: int
    hit_at_1: float
    hit_at_5: float
    recall: float
    mrr: float
    ndcg: float
    p50_ms: float
    p95_ms: float
    mrr_by_kind: Mapping[str, float] = field(default_factory=dict)


def parse_questions(lines: Iterable[str]) -> list[Question]:
    """Reads JSONL: `{"question": str, "document": str, "pages": [int, ...], "kind"?: str}`.

    Blank lines are skipped.

    Raises:
        ValueError: a line is not such an object (the message gives its number).
    """
    questions: list[Question] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            text, document, pages = item["question"], item["document"], item["pages"]
            kind = item.get("kind")
            if not (isinstance(text, str) and text.strip() and isinstance(document, str)):
                raise ValueError("`question` and `document` must be non-empty strings")
            if not pages or not all(type(p) is int and p >= 1 for p in pages):
                raise ValueError("`pages` must be a non-empty list of 1-based page numbers")
            if kind is not None and not isinstance(kind, str):
                raise ValueError("`kind` must be a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"line {number}: {exc}") from exc
        questions.append(Question(text, document, tuple(sorted(set(pages))), kind))
    return questions


def hit_at(ranking: Sequence[Page], relevant: Collection[Page], n: int) -> float:
    """1.0 when any of the first `n` hits is relevant, else 0.0 (hit@n, a.k.a. success@n)."""
    return 1.0 if any(page in relevant for page in ranking[:n]) else 0.0


def reciprocal_rank(ranking: Sequence[Page], relevant: Collection[Page], *, k: int) -> float:
    """1 / rank of the first relevant hit among the first `k` (ranks from 1), 0.0 if none.

    Its mean over questions is the MRR (Voorhees, "The TREC-8 Question Answering Track
    Report", TREC 1999).
    """
    for rank, page in enumerate(ranking[:k], start=1):
        if page in relevant:
            return 1.0 / rank
    return 0.0


def recall_at(ranking: Sequence[Page], relevant: Collection[Page], k: int) -> float:
    """|relevant pages among the first `k` hits| / |relevant pages| (0.0 if none are labelled).

    Source: Manning, Raghavan & Schütze, "Introduction to Information Retrieval" (2008), 8.3.
    """
    if not relevant:
        return 0.0
    return len(set(ranking[:k]) & set(relevant)) / len(relevant)


def ndcg_at(ranking: Sequence[Page], relevant: Collection[Page], k: int) -> float:
    """Normalized discounted cumulative gain of the first `k` hits, binary gains.

    DCG@k = Σᵢ₌₁..ₖ gᵢ / log₂(i + 1), with gᵢ = 1 when hit i is a relevant page not already
    seen higher up (a page counts once, so the score stays within 0..1), else 0;
    nDCG@k = DCG@k / IDCG@k, where IDCG@k = Σᵢ₌₁..ₘ 1 / log₂(i + 1), m = min(|relevant|, k),
    is the DCG of the ideal ranking. 0.0 if no page is labelled.

    Source: Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques",
    ACM TOIS 20(4), 2002; the log₂(i + 1) discount is the common form of their log-base
    discount (Burges et al., "Learning to rank using gradient descent", ICML 2005).
    """
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    if ideal == 0.0:
        return 0.0
    seen: set[Page] = set()
    dcg = 0.0
    for i, page in enumerate(ranking[:k], start=1):
        if page in relevant and page not in seen:
            seen.add(page)
            dcg += 1.0 / math.log2(i + 1)
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100), interpolating linearly between closest ranks.

    For sorted x₀..xₙ₋₁: h = (n - 1)·q/100, result = x⌊h⌋ + (h - ⌊h⌋)·(x⌊h⌋₊₁ - x⌊h⌋).
    Source: Hyndman & Fan, "Sample quantiles in statistical packages", The American
    Statistician 50(4), 1996, definition 7 (NumPy's default).

    Raises:
        ValueError: `values` is empty or `q` is outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def score(mode: str, outcomes: Sequence[Outcome], *, k: int) -> Scores:
    """Averages the metrics of `outcomes` (recall, MRR and nDCG at `k`) into one row.

    `mrr_by_kind` has the MRR of each `kind` present, by kind name.

    Raises:
        ValueError: `outcomes` is empty.
    """
    if not outcomes:
        raise ValueError("no outcomes to score")

    def mean(values: Iterable[float]) -> float:
        listed = list(values)
        return sum(listed) / len(listed)

    rr = [reciprocal_rank(o.ranking, o.question.relevant, k=k) for o in outcomes]
    kinds = sorted({o.question.kind for o in outcomes if o.question.kind is not None})
    latencies = [o.latency_ms for o in outcomes]
    return Scores(
        mode=mode,
        questions=len(outcomes),
        hit_at_1=mean(hit_at(o.ranking, o.question.relevant, 1) for o in outcomes),
        hit_at_5=mean(hit_at(o.ranking, o.question.relevant, 5) for o in outcomes),
        recall=mean(recall_at(o.ranking, o.question.relevant, k) for o in outcomes),
        mrr=mean(rr),
        ndcg=mean(ndcg_at(o.ranking, o.question.relevant, k) for o in outcomes),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        mrr_by_kind={
            kind: mean(r for r, o in zip(rr, outcomes, strict=True) if o.question.kind == kind)
            for kind in kinds
        },
    )


def format_table(rows: Sequence[Scores], *, k: int) -> str:
    """The scores as an aligned text table, one line per mode, ending with a newline."""
    header = ["mode", "hit@1", "hit@5", f"recall@{k}", "MRR", f"nDCG@{k}", "p50 ms", "p95 ms"]
    body = [
        [
            row.mode,
            *(f"{v:.3f}" for v in (row.hit_at_1, row.hit_at_5, row.recall, row.mrr, row.ndcg)),
            f"{row.p50_ms:.1f}",
            f"{row.p95_ms:.1f}",
        ]
        for row in rows
    ]
    return _align([header, *body])


def format_kind_table(rows: Sequence[Scores]) -> str:
    """MRR by question kind, one line per mode ("" when no question has a kind)."""
    kinds = sorted({kind for row in rows for kind in row.mrr_by_kind})
    if not kinds:
        return ""
    header = ["MRR by kind", *kinds]
    body = [[row.mode, *(_or_dash(row.mrr_by_kind.get(kind)) for kind in kinds)] for row in rows]
    return _align([header, *body])


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _align(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    return "\n".join(lines) + "\n"


BASELINE_BM25 = "baseline BM25"
"""The mode name of the plain Okapi BM25 row."""
BASELINE_FUSED = "baseline BM25+RRF"
"""The mode name of the row fusing plain BM25 with the dense ranking (RRF k 60, 1:1)."""


class Baseline:
    """Textbook retrieval over a fixed list of passages, to compare rag-gql's modes with.

    `bm25` is Okapi BM25 (Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25
    and Beyond", FnTIR 3(4), 2009) as the `bm25s` library computes it (Lù, "BM25S", 2024):
    k1 = 1.2, b = 0.75, Lucene's form: the non-negative IDF ln(1 + (N - df + 0.5) / (df + 0.5))
    and no constant (k1 + 1) factor in the term weight, which does not change the order;
    scikit-learn's tokens (runs of ≥ 2 word characters, lowercased; `\\DeclareFixedFont` is
    `declarefixedfont`, `read.fwf` is `read` `fwf`), English stop words dropped, no stemming;
    each distinct query term counts once. `dense` is exact cosine similarity against the
    passages' vectors. `fused` is Reciprocal Rank Fusion of the two (Cormack, Clarke &
    Büttcher, SIGIR 2009), k = 60, weights 1:1, over the first `depth` of each list.

    Rankings are indices into the passages, best first; ties keep passage order. Only
    passages with a positive BM25 score enter the BM25 list.

    Needs `bm25s` and `numpy` (the `eval` extra).

    Raises:
        ValueError: `pages`, `texts` and `vectors` differ in length, or are empty.
    """

    def __init__(
        self,
        pages: Sequence[Page],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
        *,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        import logging

        import bm25s
        import numpy as np
        from bm25s.tokenization import Tokenizer

        # bm25s sets its logger to DEBUG when imported; let it follow the application's level.
        logging.getLogger("bm25s").setLevel(logging.NOTSET)

        if not (len(pages) == len(texts) == len(vectors)) or not pages:
            raise ValueError("pages, texts and vectors must be non-empty and of one length")
        self.pages = tuple(pages)
        self._tokenizer = Tokenizer(stopwords="en")
        tokens = self._tokenizer.tokenize(list(texts), show_progress=False, return_as="tuple")
        self._bm25 = bm25s.BM25(method="lucene", k1=k1, b=b)
        self._bm25.index(tokens, show_progress=False)
        matrix = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self._unit = matrix / np.where(norms == 0, 1.0, norms)

    def bm25_scores(self, query: str) -> list[float]:
        """Each passage's BM25 score for `query`, in passage order (0.0 where no term occurs)."""
        (terms,) = self._tokenizer.tokenize(
            [query], update_vocab=False, return_as="string", show_progress=False
        )
        terms = [term for term in dict.fromkeys(terms) if term]
        if not terms:
            return [0.0] * len(self.pages)
        return [float(value) for value in self._bm25.get_scores(terms)]

    def bm25(self, query: str, depth: int) -> list[int]:
        """The first `depth` passages by BM25 score of `query` (those scoring above 0)."""
        import numpy as np

        scores = np.asarray(self.bm25_scores(query))
        order = np.argsort(-scores, kind="stable")[:depth]
        return [int(i) for i in order if scores[i] > 0]

    def dense(self, vector: Sequence[float], depth: int) -> list[int]:
        """The first `depth` passages by cosine similarity to `vector`."""
        import numpy as np

        query = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(query))
        similarities = self._unit @ (query / (norm or 1.0))
        return [int(i) for i in np.argsort(-similarities, kind="stable")[:depth]]

    def fused(self, query: str, vector: Sequence[float], depth: int) -> list[int]:
        """RRF (k 60, 1:1) of `bm25(query, depth)` and `dense(vector, depth)`."""
        scores: dict[int, float] = {}
        for ranking in (self.bm25(query, depth), self.dense(vector, depth)):
            for rank, index in enumerate(ranking, start=1):
                scores[index] = scores.get(index, 0.0) + 1.0 / (60 + rank)
        return sorted(scores, key=lambda index: -scores[index])

    def ranking(self, indices: Iterable[int], k: int) -> tuple[Page, ...]:
        """The pages of the first `k` of `indices`."""
        return tuple(self.pages[i] for i in list(indices)[:k])


# --- answer quality, judged by the chat model (`rag-gql eval --answers`) ----------------------

JUDGE_PROMPT = """You check an ANSWER against the numbered SOURCES it was written from.
1. Break the ANSWER into short, self-contained factual claims (leave out the citation marks).
2. For each claim, list the numbers of the SOURCES whose text supports it ([] if none does).
3. Write 3 questions that the ANSWER answers.
Reply with JSON only, in this shape:
{{"claims": [{{"claim": "...", "supported_by": [1]}}], "questions": ["...", "...", "..."]}}

SOURCES:
{sources}

ANSWER:
{answer}
"""
"""The judge's prompt; `format(sources=..., answer=...)`, sources as `[n] text` lines."""

_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judge's reading of one answer: its claims with the sources supporting each
    (1-based source numbers), and the questions it says the answer answers."""

    claims: tuple[tuple[str, frozenset[int]], ...]
    questions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AnswerScores:
    """Answer quality over a set, after RAGAS (Es, James, Espinosa-Anke & Schockaert, "RAGAS:
    Automated Evaluation of Retrieval Augmented Generation", 2023), each a mean over the
    answers where it is defined (None when it is defined for none):

    - `faithfulness`: claims supported by at least one source / claims (RAGAS's F = |V| / |S|);
    - `answer_relevance`: mean cosine similarity between the question and each question the
      judge generated from the answer (RAGAS's AR);
    - `citation_precision`: sources the answer cites (`[n]`) that support one of its claims /
      sources it cites (answers citing none are left out).

    `judged` answers had a verdict that parsed; `unjudged` did not (or the answer failed).
    """

    answers: int
    judged: int
    faithfulness: float | None
    answer_relevance: float | None
    citation_precision: float | None

    @property
    def unjudged(self) -> int:
        """Answers without a usable verdict."""
        return self.answers - self.judged


def judge_prompt(answer: str, sources: Sequence[str]) -> str:
    """`JUDGE_PROMPT` for `answer` and its sources (numbered from 1 in this order)."""
    listed = "\n".join(f"[{i}] {' '.join(text.split())}" for i, text in enumerate(sources, 1))
    return JUDGE_PROMPT.format(sources=listed, answer=answer)


def parse_verdict(reply: str, sources: int) -> Verdict | None:
    """The judge's JSON reply as a `Verdict`, None when it is not that shape.

    The first `{` to the last `}` is read (models wrap JSON in prose or code fences); source
    numbers outside 1..`sources` are dropped; claims that are not non-empty strings are skipped.
    """
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        item = json.loads(reply[start : end + 1])
    except ValueError:
        return None
    if not isinstance(item, dict):
        return None
    raw_claims, raw_questions = item.get("claims"), item.get("questions", [])
    if not isinstance(raw_claims, list) or not isinstance(raw_questions, list):
        return None
    claims: list[tuple[str, frozenset[int]]] = []
    for claim in raw_claims:
        if not isinstance(claim, dict) or not isinstance(claim.get("claim"), str):
            continue
        if not claim["claim"].strip():
            continue
        support = claim.get("supported_by", [])
        numbers = support if isinstance(support, list) else []
        claims.append(
            (
                claim["claim"],
                frozenset(n for n in numbers if type(n) is int and 1 <= n <= sources),
            )
        )
    questions = tuple(q for q in raw_questions if isinstance(q, str) and q.strip())
    return Verdict(tuple(claims), questions)


def cited_sources(answer: str, sources: int) -> frozenset[int]:
    """The source numbers the answer cites as `[n]`, within 1..`sources`."""
    return frozenset(n for n in map(int, _CITATION.findall(answer)) if 1 <= n <= sources)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0.0 if either is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


@dataclass(frozen=True, slots=True)
class JudgedAnswer:
    """One answer's inputs to `score_answers`: the verdict (None: unjudged), the sources it
    cites, and the similarities of the generated questions to the asked one."""

    verdict: Verdict | None
    cited: frozenset[int]
    similarities: tuple[float, ...]


def score_answers(judged: Sequence[JudgedAnswer]) -> AnswerScores:
    """Averages the RAGAS-style metrics of `AnswerScores` over `judged`."""
    faithful: list[float] = []
    relevance: list[float] = []
    precision: list[float] = []
    usable = 0
    for item in judged:
        if item.verdict is None:
            continue
        usable += 1
        claims = item.verdict.claims
        if claims:
            faithful.append(sum(1 for _, support in claims if support) / len(claims))
        if item.similarities:
            relevance.append(sum(item.similarities) / len(item.similarities))
        if item.cited:
            holding = frozenset().union(*(support for _, support in claims))
            precision.append(len(item.cited & holding) / len(item.cited))

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return AnswerScores(
        answers=len(judged),
        judged=usable,
        faithfulness=mean(faithful),
        answer_relevance=mean(relevance),
        citation_precision=mean(precision),
    )


def format_answer_table(row: AnswerScores) -> str:
    """The answer scores as an aligned two-line table, ending with a newline."""
    header = ["answers", "judged", "faithfulness", "answer relevance", "citation precision"]
    body = [
        str(row.answers),
        str(row.judged),
        *(_or_dash(v) for v in (row.faithfulness, row.answer_relevance, row.citation_precision)),
    ]
    return _align([header, body])
