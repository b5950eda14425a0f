"""Spreadsheets and slides: XLSX with openpyxl (read-only, streamed rows), PPTX with
python-pptx. Blocking; run in an extraction process (`extraction.py`).

Both are ZIP packages, refused at upload past the ZIP caps (`parsing.ZipLimits`). A sheet
gives units of `ROWS_PER_UNIT` rows, each a Markdown table under a `## sheet name` heading,
its header (the sheet's first non-empty row) repeated; formulas give their cached values;
columns empty in every row are left out. A presentation gives a unit per slide: its title
as a heading, the text of its shapes in order (groups opened), its tables as Markdown
tables, then its speaker notes.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pptx
from pptx.enum.shapes import MSO_SHAPE_TYPE

from rag_gql.errors import InvalidInput
from rag_gql.services.tables import markdown_table

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ROWS_PER_UNIT = 50
"""Data rows in one unit of a table (CSV, a sheet); its header comes on top of each."""


def xlsx_units(path: Path, label: str) -> list[str]:
    """The units of a workbook, sheet by sheet (`[""]` when every sheet is empty).

    Raises:
        InvalidInput: the file is not a readable workbook.
    """
    # A file object, not the path: openpyxl refuses a path whose name is not `.xlsx`.
    with path.open("rb") as file:
        try:
            book = openpyxl.load_workbook(file, read_only=True, data_only=True)
            units = [unit for sheet in book.worksheets for unit in _sheet_units(sheet)]
            book.close()
        except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
            raise
        except Exception as exc:  # openpyxl raises zip, XML, key and value errors
            raise InvalidInput(f"{label} is not a readable XLSX (corrupt or truncated)") from exc
    return units or [""]


def _sheet_units(sheet: Any) -> Iterator[str]:
    # The declared dimension is not trusted: a row is as wide as its last cell.
    sheet.reset_dimensions()
    rows: list[dict[int, str]] = []
    for values in sheet.iter_rows(values_only=True):
        row = {i: _value(v) for i, v in enumerate(values) if v is not None and _value(v)}
        if row:
            rows.append(row)
    if not rows:
        return
    columns = sorted({column for row in rows for column in row})
    table = [[row.get(column, "") for column in columns] for row in rows]
    header, body = table[0], table[1:]
    title = f"## {' '.join(str(sheet.title).split())}\n\n"
    for start in range(0, max(len(body), 1), ROWS_PER_UNIT):
        yield title + markdown_table([header, *body[start : start + ROWS_PER_UNIT]])


def _value(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return str(value).strip()


def pptx_units(path: Path, label: str) -> list[str]:
    """The units of a presentation, one per slide (`[""]` for none).

    Raises:
        InvalidInput: the file is not a readable presentation.
    """
    try:
        deck = pptx.Presentation(str(path))
        units = [_slide_text(slide) for slide in deck.slides]
    except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
        raise
    except Exception as exc:  # python-pptx raises zip, XML and key errors for damaged files
        raise InvalidInput(f"{label} is not a readable PPTX (corrupt or truncated)") from exc
    return units or [""]


def _slide_text(slide: Any) -> str:
    parts: list[str] = []
    title = slide.shapes.title
    if title is not None and title.has_text_frame and title.text_frame.text.strip():
        parts.append("# " + " ".join(title.text_frame.text.split()))
    for shape in _shapes(slide.shapes):
        if title is not None and shape.shape_id == title.shape_id:
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
            parts.append(markdown_table(rows))
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            text = shape.text_frame.text.strip()
            if text:
                parts.append(text)
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        if notes is not None and notes.text.strip():
            parts.append("Notes: " + notes.text.strip())
    return "\n\n".join(parts)


def _shapes(shapes: Any) -> Iterator[Any]:
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shapes(shape.shapes)
        else:
            yield shape
