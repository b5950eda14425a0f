"""A chunk's context: its document's title and the heading path it sits under, as a prefix.

The prefix goes into what is embedded and into the keyword text (`chunk.context`, which the
`tsv` column is generated from with the passage), never into the passage users see. It is
the "contextual chunk headers" of RAG practice (Anthropic's contextual retrieval, 2024, with
the document's own structure in place of a model-written summary). Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rag_gql.services.chunking import ChunkSpan, normalize_page

PREFIX_CHARS = 200
"""The longest prefix, in characters."""
SEPARATOR = " > "
_ELLIPSIS = "…"


class Heading(NamedTuple):
    """A heading path in force in a unit from the first place of `marker` in its text on
    (`marker` "": from the unit's start). `path` is outermost first."""

    marker: str
    path: tuple[str, ...]


def paths_from_toc(toc: Sequence[Sequence[object]], start: int, stop: int) -> list[list[Heading]]:
    """The headings of pages `[start, stop)` (0-based) from an outline of `[level, title,
    page]` entries (PyMuPDF's `Document.get_toc()`: levels from 1, pages 1-based, -1 for
    none): for each page, the path in force at its top (if any), then one `Heading` per entry
    on it. Entries without a page are left out; an entry of level n ends the path's entries
    of level n and deeper."""
    entries = sorted(
        (int(str(page)), order, int(str(level)), " ".join(str(title).split()))
        for order, (level, title, page, *_rest) in enumerate(toc)
        if int(str(page)) >= 1
    )
    stack: list[str] = []
    pages: list[list[Heading]] = []
    index = 0
    for page in range(1, stop + 1):
        top = tuple(stack)
        on_page: list[Heading] = []
        while index < len(entries) and entries[index][0] == page:
            _page, _order, level, title = entries[index]
            del stack[max(level - 1, 0) :]
            stack.append(title)
            on_page.append(Heading(title, tuple(stack)))
            index += 1
        if page > start:
            pages.append(([Heading("", top)] if top else []) + on_page)
    return pages


def prefix(title: str, path: Sequence[str], *, limit: int = PREFIX_CHARS) -> str:
    """`title > heading > subheading` in at most `limit` characters ("" when both are
    empty). A heading repeating the part before it is left out; when too long, the outermost
    headings give way to "…" first (the deepest is the most specific), then the end is cut."""
    lead = [" ".join(title.split())] if title.strip() else []
    heads: list[str] = []
    for heading in path:
        heading = " ".join(heading.split())
        previous = heads[-1] if heads else (lead[0] if lead else "")
        if heading and heading.casefold() != previous.casefold():
            heads.append(heading)
    text = SEPARATOR.join([*lead, *heads])
    cut = 1
    while len(text) > limit and cut < len(heads):
        text = SEPARATOR.join([*lead, _ELLIPSIS, *heads[cut:]])
        cut += 1
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + _ELLIPSIS
    return text


def chunk_contexts(
    spans: Sequence[ChunkSpan],
    pages: Sequence[str],
    headings: Sequence[Sequence[Heading]],
    *,
    title: str,
    limit: int = PREFIX_CHARS,
) -> list[str]:
    """The prefix of each of `spans` (chunks of `pages`, `chunk_pages`'s output): `title` and
    the path of the last heading of its page (`headings[page - 1]`, none when `headings` is
    shorter) whose marker appears before the chunk's middle in the page's normalized text (a
    marker not found counts from the page's top)."""
    found: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
    out: list[str] = []
    for span in spans:
        places = found.get(span.page)
        if places is None:
            places = _places(pages, headings, span.page)
            found[span.page] = places
        middle = (span.char_start + span.char_end) // 2
        path: tuple[str, ...] = ()
        for at, candidate in places:
            if at <= middle:
                path = candidate
        out.append(prefix(title, path, limit=limit))
    return out


def _places(
    pages: Sequence[str], headings: Sequence[Sequence[Heading]], page: int
) -> list[tuple[int, tuple[str, ...]]]:
    """`(offset in the normalized page, path)` of a page's headings, in order of offset."""
    if page - 1 >= len(headings) or not headings[page - 1]:
        return []
    # Line breaks as spaces (same length): offsets stay those of the normalized page.
    text = normalize_page(pages[page - 1]).lower().replace("\n", " ")
    places: list[tuple[int, int, tuple[str, ...]]] = []
    at = 0
    for order, heading in enumerate(headings[page - 1]):
        marker = " ".join(heading.marker.split()).lower()
        where = text.find(marker, at) if marker else -1
        if where >= 0:
            at = where
        places.append((max(where, 0) if marker else 0, order, heading.path))
    places.sort()
    return [(offset, path) for offset, _order, path in places]
