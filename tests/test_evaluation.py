"""`rag_gql.evaluation` on hand-made rankings, and `rag-gql eval`'s core on a tiny corpus."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from rag_gql.cli import main, parse_modes
from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.errors import InvalidInput
from rag_gql.eval_command import eval_principal, run_answer_eval, run_eval, stored_baseline
from rag_gql.evaluation import (
    BASELINE_BM25,
    BASELINE_FUSED,
    Baseline,
    JudgedAnswer,
    Outcome,
    Question,
    cited_sources,
    format_answer_table,
    format_kind_table,
    format_table,
    hit_at,
    judge_prompt,
    ndcg_at,
    parse_questions,
    parse_verdict,
    percentile,
    recall_at,
    reciprocal_rank,
    score,
    score_answers,
)
from rag_gql.services.retrieval import SearchMode
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf

A1, A2, A3, B1, B2 = ("a.pdf", 1), ("a.pdf", 2), ("a.pdf", 3), ("b.pdf", 1), ("b.pdf", 2)


def test_hit_at_looks_at_the_first_n_hits_only() -> None:
    ranking = [B1, B2, A2]
    assert hit_at(ranking, {A2}, 1) == 0.0
    assert hit_at(ranking, {A2}, 2) == 0.0
    assert hit_at(ranking, {A2}, 3) == 1.0
    assert hit_at(ranking, {A2}, 5) == 1.0
    assert hit_at([], {A2}, 5) == 0.0


def test_reciprocal_rank_is_one_over_the_first_relevant_rank_within_k() -> None:
    assert reciprocal_rank([A1, B1], {A1}, k=10) == 1.0
    assert reciprocal_rank([B1, B2, A3, A1], {A1, A3}, k=10) == pytest.approx(1 / 3)
    assert reciprocal_rank([B1, B2, A3], {A3}, k=2) == 0.0  # beyond k counts as a miss
    assert reciprocal_rank([B1, B2], {A1}, k=10) == 0.0


def test_recall_counts_distinct_labelled_pages() -> None:
    assert recall_at([A1, A1, B1], {A1, A2}, 10) == 0.5  # A1 twice is still one page
    assert recall_at([A2, B1, A1], {A1, A2}, 10) == 1.0
    assert recall_at([A2, B1, A1], {A1, A2}, 2) == 0.5
    assert recall_at([B1], set(), 10) == 0.0


def test_ndcg_with_binary_gains() -> None:
    assert ndcg_at([A1, A2, B1], {A1, A2}, 10) == pytest.approx(1.0)  # ideal order
    # Relevant at ranks 1 and 3 of two: (1 + 1/log2 4) / (1 + 1/log2 3).
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at([A1, B1, A2], {A1, A2}, 10) == pytest.approx(expected)
    # One relevant page, found at rank 2: 1/log2 3.
    assert ndcg_at([B1, A1], {A1}, 10) == pytest.approx(1 / math.log2(3))
    # A page found twice gains once, so the score never exceeds 1.
    assert ndcg_at([A1, A1, A1], {A1}, 10) == pytest.approx(1.0)
    # The ideal ranking is cut at k too: 3 labelled pages, k = 2, both found.
    assert ndcg_at([A1, A2], {A1, A2, A3}, 2) == pytest.approx(1.0)
    assert ndcg_at([B1, B2], {A1}, 10) == 0.0
    assert ndcg_at([A3, A1], {A1}, 1) == 0.0


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 50) == pytest.approx(25.0)
    assert percentile(values, 95) == pytest.approx(38.5)  # h = 2.85: 30 + 0.85 * 10
    assert percentile(values, 0) == 10.0 and percentile(values, 100) == 40.0
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_parse_questions_reads_jsonl_with_optional_kind() -> None:
    lines = [
        json.dumps({"question": "Q1?", "document": "a.pdf", "pages": [3, 1, 3], "kind": "x"}),
        "",
        json.dumps({"question": "Q2?", "document": "b.pdf", "pages": [2]}),
    ]
    first, second = parse_questions(lines)
    assert first == Question("Q1?", "a.pdf", (1, 3), "x")
    assert first.relevant == {A1, A3}
    assert second.kind is None


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"question": "Q?", "document": "a.pdf"}',
        '{"question": "Q?", "document": "a.pdf", "pages": []}',
        '{"question": "Q?", "document": "a.pdf", "pages": [0]}',
        '{"question": "", "document": "a.pdf", "pages": [1]}',
        '{"question": "Q?", "document": "a.pdf", "pages": [1], "kind": 3}',
    ],
)
def test_parse_questions_names_the_bad_line(line: str) -> None:
    good = json.dumps({"question": "Q?", "document": "a.pdf", "pages": [1]})
    with pytest.raises(ValueError, match=r"^line 2: "):
        parse_questions([good, line])


def test_the_shipped_question_set_parses() -> None:
    path = Path(__file__).parent / "data" / "eval_questions.jsonl"
    questions = parse_questions(path.read_text(encoding="utf-8").splitlines())
    corpus = (path.parent / "eval_corpus.txt").read_text().split()
    assert len(questions) == 117
    assert {q.document for q in questions} == set(corpus)


def test_the_shipped_sqlite_question_set_parses_and_is_half_identifiers() -> None:
    path = Path(__file__).parent / "data" / "eval_questions_sqlite.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    questions = parse_questions(lines)
    assert len(questions) >= 40
    assert sum(q.kind == "identifier" for q in questions) * 2 >= len(questions)
    assert all(q.document.endswith(".html") for q in questions)
    assert len({q.text for q in questions}) == len(questions)
    assert all(json.loads(line)["section"] for line in lines)  # the heading, for readers
    script = (path.parent / "get-sqlite-docs.sh").read_text()
    assert "apt-get download" in script and "sqlite3-doc" in script


def test_score_averages_and_splits_mrr_by_kind() -> None:
    outcomes = [
        Outcome(Question("q1", "a.pdf", (1,), "id"), (A1, B1), 10.0),  # RR 1
        Outcome(Question("q2", "a.pdf", (2,), "id"), (B1, A2), 20.0),  # RR 1/2
        Outcome(Question("q3", "b.pdf", (1, 2), "para"), (A1, B2, A3), 30.0),  # RR 1/2
        Outcome(Question("q4", "b.pdf", (2,), "para"), (A1, A2), 40.0),  # miss
    ]
    row = score("HYBRID", outcomes, k=10)
    assert row.questions == 4
    assert row.hit_at_1 == 0.25 and row.hit_at_5 == 0.75
    assert row.mrr == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert row.recall == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert row.p50_ms == pytest.approx(25.0)
    assert row.mrr_by_kind == {"id": pytest.approx(0.75), "para": pytest.approx(0.25)}
    table = format_table([row], k=10)
    assert table.splitlines()[0].split() == [
        "mode", "hit@1", "hit@5", "recall@10", "MRR", "nDCG@10", "p50", "ms", "p95", "ms"
    ]  # fmt: skip
    assert table.splitlines()[1].split()[:5] == ["HYBRID", "0.250", "0.750", "0.625", "0.500"]
    assert format_kind_table([row]).splitlines()[1].split() == ["HYBRID", "0.750", "0.250"]
    no_kind = score("VECTOR", [Outcome(Question("q", "a.pdf", (1,)), (A1,), 1.0)], k=10)
    assert format_kind_table([no_kind]) == ""


def test_modes_are_parsed_in_order_without_repeats() -> None:
    assert parse_modes("hybrid, VECTOR,hybrid") == [SearchMode.HYBRID, SearchMode.VECTOR]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_modes("VECTOR,SEMANTIC")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_modes(" , ")


def test_eval_command_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["eval", "q.jsonl", "--corpus", ".", "--modes", "FUZZY"])
    assert exited.value.code == 2
    assert "--modes" in capsys.readouterr().err


def test_baseline_bm25_ranks_by_okapi_bm25_and_ignores_stop_words() -> None:
    pages = [A1, A2, A3, B1]
    texts = [
        "The cat sat on the mat.",
        "Use \\DeclareFixedFont to declare a fixed font.",
        "A dog and a cat and another cat.",
        "Nothing of interest here.",
    ]
    index = Baseline(pages, texts, [[1.0, 0.0]] * 4)
    # "cat" twice in a short passage beats once; the stop words match nothing.
    assert index.bm25("the cat", 10) == [2, 0]
    assert index.bm25("DeclareFixedFont", 10) == [1]
    assert index.bm25("the and of", 10) == []
    assert index.bm25("unknownword", 10) == []
    assert index.ranking(index.bm25("cat", 10), 1) == (A3,)
    # Textbook scores (k1 1.2, b 0.75): idf = ln(1 + (N - df + 0.5) / (df + 0.5)) with N 4,
    # df 2 for "cat"; the passages have 3, 5, 4 and 3 terms once the stop words are gone.
    idf = math.log(1 + (4 - 2 + 0.5) / (2 + 0.5))

    def bm25(tf: int, length: int) -> float:
        return idf * tf / (tf + 1.2 * (0.25 + 0.75 * length / 3.75))  # no (k1 + 1) factor

    scores = index.bm25_scores("cats? The cat!")  # a term counts once, however often asked
    assert scores == pytest.approx([bm25(1, 3), 0.0, bm25(2, 4), 0.0], rel=1e-5)


def test_baseline_dense_is_cosine_and_fused_is_rrf_60() -> None:
    pages = [A1, A2, A3]
    texts = ["alpha beta", "gamma", "delta"]
    index = Baseline(pages, texts, [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert index.dense([0.0, 5.0], 10) == [1, 2, 0]  # the norm does not count
    assert index.dense([0.0, 5.0], 2) == [1, 2]
    # BM25 ranks passage 0 alone; dense ranks 1, 2, 0: scores 1/61 + 1/63, 1/61, 1/62.
    assert index.fused("alpha", [0.0, 1.0], 10) == [0, 1, 2]
    with pytest.raises(ValueError, match="one length"):
        Baseline(pages, texts, [[1.0]])


def test_parse_verdict_reads_the_judges_json_and_drops_what_is_not_that_shape() -> None:
    reply = (
        'Sure! ```json\n{"claims": [{"claim": "A is B", "supported_by": [1, 7, "2"]}, '
        '{"claim": "C", "supported_by": []}, {"claim": ""}, 3], "questions": ["Q?", 4]}\n```'
    )
    verdict = parse_verdict(reply, sources=3)
    assert verdict is not None
    assert verdict.claims == (("A is B", frozenset({1})), ("C", frozenset()))
    assert verdict.questions == ("Q?",)
    for bad in ("no json here", '{"claims": 3}', "[1, 2]", '{"claims": [] ', "{bad json}"):
        assert parse_verdict(bad, sources=3) is None, bad


def test_score_answers_after_ragas() -> None:
    verdict = parse_verdict(
        '{"claims": [{"claim": "x", "supported_by": [1]}, {"claim": "y", "supported_by": []}],'
        ' "questions": ["q1", "q2"]}',
        sources=2,
    )
    judged = [
        # faithfulness 1/2; cites 1 and 2, only 1 holds a claim: precision 1/2
        JudgedAnswer(verdict, cited_sources("x [1], y [2] [9]", 2), (0.5, 1.0)),
        JudgedAnswer(None, frozenset(), ()),  # the judge's reply did not parse
    ]
    row = score_answers(judged)
    assert (row.answers, row.judged, row.unjudged) == (2, 1, 1)
    assert row.faithfulness == pytest.approx(0.5)
    assert row.answer_relevance == pytest.approx(0.75)
    assert row.citation_precision == pytest.approx(0.5)
    assert format_answer_table(row).splitlines()[1].split() == ["2", "1", "0.500", "0.750", "0.500"]
    empty = score_answers([JudgedAnswer(None, frozenset(), ())])
    assert empty.faithfulness is None and "-" in format_answer_table(empty)
    prompt = judge_prompt("The answer [1].", ["first\n source", "second"])
    assert "[1] first source\n[2] second" in prompt and "The answer [1]." in prompt


# --- end to end: ingest a tiny corpus, search, score ------------------------------------------

CORPUS = {
    "floats.pdf": [
        "The \\flushfloatsnow command places every pending figure and table on the current "
        "page without starting a new page early.",
        "Figures and tables float: LaTeX moves them to the top or bottom of a page, or to a "
        "page of their own, where they fit best.",
    ],
    "lengths.pdf": [
        "A length such as the text width can be set to a fraction of another length, for "
        "example half of the line width, with an arithmetic expression.",
        "Rubber lengths stretch and shrink: glue between paragraphs grows so that the page "
        "is filled to the bottom.",
    ],
    "tables.pdf": [
        "A table spreads over several pages when it is too long: the header row repeats at "
        "the top of every page and the footer at the bottom.",
        "Columns of a table can be given a total width; the X columns share whatever space "
        "the other columns leave over.",
    ],
}

QUESTIONS = [
    ("What does \\flushfloatsnow do?", "floats.pdf", [1], "identifier"),
    ("Why do my figures move to the top of another page?", "floats.pdf", [2], "paraphrase"),
    ("How do I make a length half of the line width?", "lengths.pdf", [1], "paraphrase"),
    ("Can a long table repeat its header row on every page?", "tables.pdf", [1], "paraphrase"),
]


def _write_corpus(folder: Path) -> list[Question]:
    folder.mkdir()
    for name, pages in CORPUS.items():
        (folder / name).write_bytes(make_pdf(pages))
    return parse_questions(
        json.dumps({"question": q, "document": d, "pages": p, "kind": kind})
        for q, d, p, kind in QUESTIONS
    )


async def test_eval_ingests_searches_and_scores_every_mode(
    settings: Settings, ollama: StandinState, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    questions = _write_corpus(corpus)
    modes = [SearchMode.VECTOR, SearchMode.KEYWORD, SearchMode.HYBRID]

    rows = await run_eval(
        settings, questions, corpus=corpus, modes=modes, k=5, workspace_name="eval", baseline=True
    )

    assert [row.mode for row in rows] == [
        "VECTOR", "KEYWORD", "HYBRID", BASELINE_BM25, BASELINE_FUSED
    ]  # fmt: skip
    by_mode = {row.mode: row for row in rows}
    for mode in ("KEYWORD", "HYBRID", BASELINE_BM25, BASELINE_FUSED):
        # The command's name is one rare lexeme: full text search puts its page first.
        assert by_mode[mode].mrr_by_kind["identifier"] == 1.0, mode
    for row in rows:
        assert row.questions == len(QUESTIONS)
        assert 0.0 <= row.ndcg <= 1.0 and 0.0 <= row.recall <= 1.0
        assert 0.0 < row.p50_ms <= row.p95_ms
    assert by_mode["HYBRID"].mrr > 0.5

    # A second run reuses the user, workspace and documents: nothing is embedded again.
    embedded = ollama.embed_inputs
    again = await run_eval(
        settings, questions, corpus=corpus, modes=[SearchMode.KEYWORD], k=5, workspace_name="eval"
    )
    assert ollama.embed_inputs - embedded == 1  # the start-up dimension probe only
    assert again[0].mrr == by_mode["KEYWORD"].mrr


async def test_the_baseline_reads_only_the_eval_workspace_chunks(
    settings: Settings, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    questions = _write_corpus(corpus)
    other = tmp_path / "other"
    other.mkdir()
    (other / "other.pdf").write_bytes(make_pdf(["The \\flushfloatsnow command, elsewhere."]))
    other_question = [Question("What does \\flushfloatsnow do?", "other.pdf", (1,))]
    for name, folder, asked in (("iso-a", corpus, questions), ("iso-b", other, other_question)):
        await run_eval(
            settings, asked, corpus=folder, modes=[], k=5, workspace_name=name, baseline=True
        )
    db = Database(settings.database_url or "")
    try:
        first = await stored_baseline(db, await eval_principal(db, "iso-a"))
        second = await stored_baseline(db, await eval_principal(db, "iso-b"))
    finally:
        await db.dispose()
    assert {name for name, _ in first.pages} == set(CORPUS)
    assert len(first.pages) == sum(len(pages) for pages in CORPUS.values())
    assert second.pages == (("other.pdf", 1),)
    assert first.ranking(first.bm25("flushfloatsnow", 10), 10) == (("floats.pdf", 1),)


async def test_eval_principal_is_created_once_per_workspace_name(settings: Settings) -> None:
    db = Database(settings.database_url or "")
    try:
        first = await eval_principal(db, "eval")
        assert await eval_principal(db, "eval") == first
        other = await eval_principal(db, "Eval: chunk size 500")
        assert other.workspace_id != first.workspace_id
        assert other.email == "eval-chunk-size-500@eval.invalid"
    finally:
        await db.dispose()


async def test_eval_refuses_missing_documents_and_a_bad_k_before_ingesting(
    settings: Settings, tmp_path: Path
) -> None:
    questions = [Question("Q?", "absent.pdf", (1,))]
    with pytest.raises(FileNotFoundError, match=r"absent\.pdf"):
        await run_eval(
            settings,
            questions,
            corpus=tmp_path,
            modes=[SearchMode.KEYWORD],
            k=5,
            workspace_name="e",
        )
    with pytest.raises(InvalidInput, match="SEARCH_MAX_K"):
        await run_eval(
            settings,
            questions,
            corpus=tmp_path,
            modes=[SearchMode.KEYWORD],
            k=settings.search_max_k + 1,
            workspace_name="e",
        )


async def test_eval_answers_are_judged_by_the_chat_model(
    settings: Settings, ollama: StandinState, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    questions = _write_corpus(corpus)[:1]
    # The stand-in gives every chat this reply: as the answer (it cites [1]) and as the verdict
    # (its one claim is held by source 1; its question is the one asked, word for word).
    ollama.chat_reply = json.dumps(
        {
            "claims": [{"claim": "It flushes the floats [1].", "supported_by": [1]}],
            "questions": [questions[0].text],
        }
    )
    judged = await run_answer_eval(settings, questions, corpus=corpus, k=3, workspace_name="ans")
    assert (judged.answers, judged.judged) == (1, 1)
    assert judged.faithfulness == 1.0 and judged.citation_precision == 1.0
    assert judged.answer_relevance == pytest.approx(1.0)
    judge_messages = ollama.last_chat_messages
    assert "SOURCES:" in judge_messages[-1]["content"]
    assert "\\flushfloatsnow" in judge_messages[-1]["content"]  # the retrieved source

    ollama.chat_reply = "Not a verdict [1]."
    judged = await run_answer_eval(settings, questions, corpus=corpus, k=3, workspace_name="ans")
    assert (judged.answers, judged.judged, judged.faithfulness) == (1, 0, None)
