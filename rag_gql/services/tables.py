"""Tables as Markdown (GitHub's pipe tables), and their splitting by rows with the header
repeated, so that a cell's text is always in a chunk that names its column.

`markdown_table` writes rows of cells: the first row is the header, then the delimiter row
(`| --- |`), then the data rows; a cell's line breaks become spaces and its `|` is escaped.
`table_spans` finds such tables in a text; `split_table` cuts one into pieces of at most a
given size, each piece its caption (a Markdown heading line just above the table, such as a
sheet's name) and header followed by whole rows. A header longer than half the size, or a
row that cannot fit with it, is left to the caller to cut as prose: a bounded result for a
table of thousands of columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


def _cell(value: object) -> str:
    if value is None:
        return ""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(rows: Iterable[Sequence[object]]) -> str:
    """Renders rows (the first one the header) as a Markdown table; rows are padded with
    empty cells to the widest one. No rows: an empty string."""
    cells = [[_cell(value) for value in row] for row in rows]
    if not cells:
        return ""
    width = max(1, max(len(row) for row in cells))
    lines = []
    for number, row in enumerate(cells):
        row = row + [""] * (width - len(row))
        lines.append("| " + " | ".join(row) + " |")
        if number == 0:
            lines.append("|" + " --- |" * width)
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TableSpan:
    """A Markdown table in a text: `[start, end)` from its caption (or header) to the end of
    its last row; `body` is where its first data row starts (`end` when it has none)."""

    start: int
    body: int
    end: int


def _is_delimiter(line: str) -> bool:
    line = line.strip()
    if len(line) < 3 or not line.startswith("|"):
        return False
    cells = line.strip("|").split("|")
    return all(cell.strip() and not cell.strip().strip(":-") for cell in cells)


def table_spans(text: str) -> list[TableSpan]:
    """The Markdown tables of `text`, in order, in one pass over its lines: a line starting
    with `|` followed by a delimiter row, and the `|` lines after them. A heading line
    (`#`) just above the header, blank lines between, counts as the table's caption."""
    lines: list[tuple[int, str]] = []
    at = 0
    for line in text.split("\n"):
        lines.append((at, line))
        at += len(line) + 1
    spans: list[TableSpan] = []
    i = 0
    while i + 1 < len(lines):
        start, line = lines[i]
        if not (line.lstrip().startswith("|") and _is_delimiter(lines[i + 1][1])):
            i += 1
            continue
        j = i + 2
        while j < len(lines) and lines[j][1].lstrip().startswith("|"):
            j += 1
        body = lines[i + 2][0] if i + 2 < j else None
        end = lines[j - 1][0] + len(lines[j - 1][1])
        k = i - 1
        while k >= 0 and not lines[k][1].strip():
            k -= 1
        if (
            k >= 0
            and lines[k][1].lstrip().startswith("#")
            and (not spans or spans[-1].end < lines[k][0])
        ):
            start = lines[k][0]
        spans.append(TableSpan(start, end if body is None else body, end))
        i = j
    return spans


def split_table(text: str, span: TableSpan, size: int) -> list[tuple[int, int, str]] | None:
    """Cuts the table `span` of `text` into `(start, end, piece)` triples, each piece at most
    `size` characters: the caption and header, then whole rows. `[start, end)` is the range
    of the rows in `text` (the first piece's starts at the caption). None when the header
    takes more than half of `size` or a row does not fit beside it: cut it as prose then.
    """
    head = text[span.start : span.body].rstrip("\n")
    if len(head) > size // 2:
        return None
    if span.body >= span.end:
        return [(span.start, span.end, text[span.start : span.end])]
    pieces: list[tuple[int, int, str]] = []
    first, last = span.body, span.body
    rows: list[str] = []
    length = len(head)
    for row_start, row in _rows(text, span.body, span.end):
        if len(head) + 1 + len(row) > size:
            return None
        if rows and length + 1 + len(row) > size:
            pieces.append((first, last, head + "\n" + "\n".join(rows)))
            rows, length, first = [], len(head), row_start
        rows.append(row)
        length += 1 + len(row)
        last = row_start + len(row)
    pieces.append((first, last, head + "\n" + "\n".join(rows)))
    # The first piece starts at the caption: it is all in `text`.
    pieces[0] = (span.start, pieces[0][1], pieces[0][2])
    return pieces


def _rows(text: str, start: int, end: int) -> Iterator[tuple[int, str]]:
    at = start
    for row in text[start:end].split("\n"):
        yield at, row
        at += len(row) + 1
