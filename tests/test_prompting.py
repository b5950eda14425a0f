"""Citation parsing and prompt fitting (pure functions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from rag_gql.db.models import Document, Message
from rag_gql.services.citations import cited_numbers, estimate_tokens
from rag_gql.services.generation import build_prompt
from rag_gql.services.retrieval import SearchHit


def test_cited_numbers() -> None:
    assert cited_numbers("A [2]. B [1][3]. C [2, 4]. D [9].", 4) == [2, 1, 3, 4]
    assert cited_numbers("no citations here", 3) == []
    assert cited_numbers("[0] and [5]", 4) == []
    assert cited_numbers("see [1 , 2]", 2) == [1, 2]


def _hit(n: int, text: str) -> SearchHit:
    doc = Document(id=uuid.uuid4(), filename=f"d{n}.pdf", created_at=datetime.now(UTC))
    return SearchHit(
        chunk_id=n,
        score=1.0 / n,
        text=text,
        snippet=text,
        page=n,
        char_start=0,
        char_end=len(text),
        document=doc,
    )


def test_sources_are_dropped_lowest_ranked_first_to_fit_the_context() -> None:
    hits = [_hit(n, f"source {n} " + "word " * 400) for n in range(1, 6)]  # ~500 tokens each
    messages, kept = build_prompt("q?", hits, num_ctx=2200, answer_tokens=200, history_tokens=0)
    assert [h.chunk_id for h in kept] == [1, 2, 3]
    system = messages[0].content
    assert "[1] d1.pdf, page 1:" in system and "[3] d3.pdf, page 3:" in system
    assert "[4]" not in system
    total = sum(estimate_tokens(m.content) for m in messages) + 200
    assert total <= 2200
    messages, kept = build_prompt("q?", hits, num_ctx=100_000)
    assert len(kept) == 5


def test_history_is_bounded_by_its_budget_newest_kept() -> None:
    history = [
        Message(role="user" if i % 2 == 0 else "assistant", content=f"turn {i} " + "x " * 200)
        for i in range(6)
    ]
    # Each turn is about 100 estimated tokens: a budget of 250 keeps the newest two.
    messages, _ = build_prompt("follow-up?", [], history, history_tokens=250)
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1].content.startswith("turn 4")
    assert messages[2].content.startswith("turn 5")
    assert messages[-1].content == "follow-up?"
    assert "(no sources were found)" in messages[0].content
