"""A chunk's context prefix: heading paths from a PDF outline, the prefix's bound, and which
heading of a page a chunk sits under."""

from __future__ import annotations

from rag_gql.services.chunking import ChunkSpan, chunk_pages
from rag_gql.services.context import (
    PREFIX_CHARS,
    Heading,
    chunk_contexts,
    paths_from_toc,
    prefix,
)

TOC: list[list[object]] = [
    [1, "1 Introduction", 1],
    [1, "2 Usage", 2],
    [2, "2.1 Options", 2],
    [2, "2.2 Commands", 4],
    [3, "2.2.1 \\foo", 4],
    [1, "Index", 5],
    [2, "nowhere", -1],
]


def test_an_outline_gives_each_page_its_path_at_the_top_and_its_headings() -> None:
    pages = paths_from_toc(TOC, 0, 5)
    assert pages[0] == [Heading("1 Introduction", ("1 Introduction",))]
    assert pages[1] == [
        Heading("", ("1 Introduction",)),
        Heading("2 Usage", ("2 Usage",)),
        Heading("2.1 Options", ("2 Usage", "2.1 Options")),
    ]
    assert pages[2] == [Heading("", ("2 Usage", "2.1 Options"))]
    assert pages[3][-1] == Heading("2.2.1 \\foo", ("2 Usage", "2.2 Commands", "2.2.1 \\foo"))
    assert pages[4][-1] == Heading("Index", ("Index",))
    # A batch of pages gets the same paths as the whole document has for them.
    assert paths_from_toc(TOC, 2, 4) == pages[2:4]
    assert paths_from_toc([], 0, 3) == [[], [], []]


def test_the_prefix_is_bounded_and_keeps_the_deepest_headings() -> None:
    assert prefix("Manual", ("Usage", "Options")) == "Manual > Usage > Options"
    assert prefix("", ()) == "" and prefix("Manual", ()) == "Manual"
    assert prefix("", ("Usage",)) == "Usage"
    # A heading that repeats what comes before it (an HTML title and its h1) is said once.
    assert prefix("SELECT", ("select", "The WHERE clause")) == "SELECT > The WHERE clause"
    long = tuple(f"Heading number {i} of a deep outline" for i in range(10))
    text = prefix("Manual", long)
    assert len(text) <= PREFIX_CHARS
    assert text.startswith("Manual > … > ") and text.endswith(long[-1])
    huge = prefix("T" * 500, ("x",))
    assert len(huge) == PREFIX_CHARS and huge.endswith("…")


def test_a_chunk_sits_under_the_last_heading_before_its_middle() -> None:
    intro = " ".join(f"intro sentence {i}." for i in range(40))
    usage = " ".join(f"usage sentence {i}." for i in range(40))
    page = f"{intro}\n\n2 Usage\n\n{usage}"
    spans = chunk_pages([page], size=300, overlap=0)
    headings = [[Heading("", ("1 Introduction",)), Heading("2 usage", ("2 Usage",))]]
    contexts = chunk_contexts(spans, [page], headings, title="Manual")
    by_text = dict(zip((s.text for s in spans), contexts, strict=True))
    assert by_text[spans[0].text] == "Manual > 1 Introduction"
    assert by_text[spans[-1].text] == "Manual > 2 Usage"
    assert {c for s, c in by_text.items() if "usage sentence 5." in s} == {"Manual > 2 Usage"}
    # Pages without headings, or past the list, have the title alone.
    lone = ChunkSpan(page=2, char_start=0, char_end=4, text="more")
    assert chunk_contexts([lone], [page, "more"], headings, title="Manual") == ["Manual"]
