"""Splits page texts into overlapping chunks that keep their page and character offsets.

Markdown tables (`tables.py`) are cut apart from the prose around them, by whole rows, each
chunk of a table starting with its caption and header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag_gql.services.pgtext import replace_nul
from rag_gql.services.tables import split_table, table_spans

_WHITESPACE_RUN = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
# Break preferences, best first: paragraph, line, sentence end, any whitespace.
_BREAKS = ("\n\n", "\n", ". ", " ")


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    """A chunk: `page` (1-based) and `[char_start, char_end)` into that page's normalized text.

    `text` is that range of the text, except in a table's second and later chunks: there it
    is the table's caption and header, then the rows of the range.
    """

    page: int
    char_start: int
    char_end: int
    text: str


def normalize_page(text: str) -> str:
    """Collapses runs of spaces and blank lines; offsets refer to this normalized text."""
    text = _WHITESPACE_RUN.sub(" ", replace_nul(text))
    return _BLANK_LINES.sub("\n\n", text).strip()


def chunk_pages(pages: Sequence[str], *, size: int, overlap: int) -> list[ChunkSpan]:
    """Cuts each page into chunks of at most `size` characters overlapping by about `overlap`.

    Cuts fall on a paragraph, line, sentence or word boundary when one lies in the last half
    of the window (like LangChain's recursive character splitter). Chunks never span pages,
    so every chunk has one page to cite. Empty pages give no chunk. A Markdown table gets
    chunks of its own, by whole rows, each with the table's caption and header
    (`tables.split_table`; one whose header or a row is too long for that is cut as prose).

    Raises:
        ValueError: when `overlap >= size`.
    """
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    chunks: list[ChunkSpan] = []
    for number, raw in enumerate(pages, start=1):
        text = normalize_page(raw)
        at = 0
        for span in table_spans(text):
            _windows(chunks, number, text, at, span.start, size, overlap)
            pieces = split_table(text, span, size)
            if pieces is None:  # a header or a row too long for a chunk: cut as prose
                _windows(chunks, number, text, span.start, span.end, size, overlap)
            else:
                chunks.extend(ChunkSpan(number, a, b, piece) for a, b, piece in pieces)
            at = span.end
        _windows(chunks, number, text, at, len(text), size, overlap)
    return chunks


def _windows(
    chunks: list[ChunkSpan], number: int, page: str, begin: int, stop: int, size: int, overlap: int
) -> None:
    """Appends the overlapping windows of `page[begin:stop]` (offsets into `page`)."""
    text = page[:stop]
    start = begin
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            end = _best_break(text, start, end)
        piece = text[start:end].strip()
        if piece:
            lead = len(text[start:end]) - len(text[start:end].lstrip())
            chunks.append(ChunkSpan(number, start + lead, start + lead + len(piece), piece))
        if end >= len(text):
            break
        next_start = max(end - overlap, start + 1)
        # Start the overlap on a word boundary, not mid-word.
        space = text.find(" ", next_start, end)
        start = space + 1 if space != -1 else next_start


def _best_break(text: str, start: int, end: int) -> int:
    floor = start + (end - start) // 2
    for sep in _BREAKS:
        at = text.rfind(sep, floor, end)
        if at != -1:
            return at + len(sep)
    return end
