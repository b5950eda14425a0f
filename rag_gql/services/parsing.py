"""Turns uploaded files into unit texts: pages, sections or blocks of rows. Blocking throughout.

Two sides. At upload, in the API process, `detect_type` only does bounded, linear-time work:
magic bytes, a ZIP's central directory read as metadata (`ZipLimits`), a few KiB of text.
Everything that parses runs in the worker's extraction processes (`extraction.py`, under a
time and memory limit): `count_units` counts the units and enforces MAX_PAGES, then
`extract_units` reads a batch of units per call, so a big PDF is never held whole. No pattern
here has nested quantifiers. Parsers: PyMuPDF for PDF, XPS, EPUB, MOBI, FB2 and
CBZ (OCR of pages without text: `ocr.py`; PDF tables: `Page.find_tables`); python-docx for
DOCX; openpyxl (read-only) for XLSX; python-pptx for PPTX; BeautifulSoup for HTML;
markdown-it-py for Markdown; the `csv` module for CSV; charset-normalizer for the encoding of
text files. Tables of every format become Markdown tables (`tables.py`).
"""

from __future__ import annotations

import codecs
import csv
import enum
import functools
import io
import itertools
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import charset_normalizer
import docx
import pymupdf
import pymupdf.table
from bs4 import BeautifulSoup, Tag
from bs4.element import NavigableString
from docx.table import Table
from markdown_it import MarkdownIt

from rag_gql.errors import InvalidInput
from rag_gql.services import office
from rag_gql.services.context import Heading, paths_from_toc
from rag_gql.services.ocr import OcrMode, OcrOptions, needs_ocr, ocr_page
from rag_gql.services.pgtext import repair_surrogates
from rag_gql.services.tables import markdown_table, split_table, table_spans

PDF = "application/pdf"
EPUB = "application/epub+zip"
XPS = "application/vnd.ms-xpsdocument"
MOBI = "application/x-mobipocket-ebook"
FB2 = "application/x-fictionbook+xml"
CBZ = "application/vnd.comicbook+zip"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
CSV = "text/csv"
XLSX = office.XLSX
PPTX = office.PPTX

SUPPORTED = "PDF, EPUB, XPS, MOBI, FB2, CBZ, DOCX, XLSX, PPTX, HTML, Markdown, plain text and CSV"
ROWS_PER_UNIT = office.ROWS_PER_UNIT
"""Data rows in one CSV or XLSX unit (the header comes on top of each)."""
SECTION_CHARS = 4000
"""A section longer than this (about a page) is cut between paragraphs into several units."""

PDF_MAGIC = b"%PDF-"
PDF_EOF = b"%%EOF"


class Unit(enum.StrEnum):
    """What `Chunk.page` counts for a document."""

    PAGE = "PAGE"
    """PDF, XPS and CBZ pages; EPUB, MOBI and FB2 pages as PyMuPDF lays them out; PPTX slides."""
    SECTION = "SECTION"
    """DOCX, HTML, Markdown: heading-delimited sections; plain text: paragraphs up to ~4 KB."""
    ROWS = "ROWS"
    """CSV: blocks of `ROWS_PER_UNIT` rows; XLSX: such blocks of each sheet in turn."""


# PyMuPDF's name for each format it opens.
_MUPDF = {PDF: "pdf", EPUB: "epub", XPS: "xps", MOBI: "mobi", FB2: "fb2", CBZ: "cbz"}
_NAMES = {
    **{media_type: name.upper() for media_type, name in _MUPDF.items()},
    DOCX: "DOCX",
    XLSX: "XLSX",
    PPTX: "PPTX",
    HTML: "HTML",
    MARKDOWN: "Markdown",
    TEXT: "plain text",
    CSV: "CSV",
}
_UNITS = {**dict.fromkeys((*_MUPDF, PPTX), Unit.PAGE), CSV: Unit.ROWS, XLSX: Unit.ROWS}
# Formats whose image pages are read by OCR, and whose pages may hold ruled tables.
_OCR_FORMATS = {PDF, XPS, CBZ}
_NOUNS = {Unit.PAGE: "pages", Unit.SECTION: "sections", Unit.ROWS: "blocks of rows"}
# Extensions only choose between text formats; binary formats are told by their content.
_TEXT_EXTENSIONS = {
    **dict.fromkeys((".html", ".htm", ".xhtml"), HTML),
    **dict.fromkeys((".md", ".markdown"), MARKDOWN),
    **dict.fromkeys((".csv", ".tsv"), CSV),
    **dict.fromkeys((".txt", ".text"), TEXT),
}
_OTHER_MAGIC = [
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy (.doc, .xls, .ppt) or encrypted Office file"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
]
_IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jxr")
# EPUB's font obfuscation (IDPF and Adobe) hides fonts, not text: such a book is readable.
_FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}
_SNIFF = 8192
_MAX_META = 1 << 20  # bytes read from a ZIP member while sniffing (zip bombs)
_RATIO_FLOOR = 1 << 20  # members smaller than this are not held to ZIP_MAX_RATIO
# Patterns applied to uploaded text: single quantifiers over disjoint classes, so each runs in
# linear time (tests/test_upload_safety.py checks it on adversarial input).
_HTML_TAG = re.compile(r"<(body|div|p|h[1-6])[\s>]")
_MARKDOWN_HINT = re.compile(r"^(#{1,6}[ \t]+\S|```|~~~)|\]\([^)\s\]]+\)", re.M)
_SETEXT_UNDERLINE = re.compile(r"(=+|-+)[ \t]*")
_ALGORITHM = re.compile(rb'Algorithm="([^"]+)"')
_HTML_HEADING = re.compile(r"\x01([1-6])")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_BLOCK_TAGS = [
    *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption"),
    *("figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li"),
    *("main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul", "caption"),
]


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Caps on a ZIP-based upload, checked in its central directory before any member is read."""

    max_entries: int = 10_000
    max_uncompressed_bytes: int = 256 * 1024 * 1024
    max_ratio: float = 100.0
    """Most uncompressed bytes per compressed byte of a member (of 1 MiB or more)."""


@dataclass(frozen=True, slots=True)
class Inspection:
    """What `inspect_file` found: the type, what a unit is, and how many units there are."""

    media_type: str
    unit: Unit
    unit_count: int


@dataclass(frozen=True, slots=True)
class Extracted:
    """What `extract_units` read: the texts of the units in order, how many of them were
    read by OCR, and the headings each unit sits under (`headings[i]` for `texts[i]`; empty
    when the file has none). The document's own title is `properties.file_properties`'."""

    texts: list[str]
    ocr_pages: int = 0
    headings: list[list[Heading]] = field(default_factory=list)


# `pymupdf.open` is `pymupdf.Document`, whose constructor has no type hints; nor have these.
_open: Any = pymupdf.open
_Rect: Any = pymupdf.Rect
_Point: Any = pymupdf.Point
MUPDF_STORE_PAGES = 256
"""Pages after which an extraction process empties MuPDF's object store."""


def detect_type(path: Path, filename: str, *, zip_limits: ZipLimits | None = None) -> str:
    """Tells the media type of an upload from its content, in bounded, linear time.

    Reads magic bytes; for a ZIP, its central directory (checked against `zip_limits`) and at
    most 1 MiB of a few small members; for text, the first 8 KiB, which alone choose between
    HTML, Markdown, CSV and plain text (the extension of `filename` decides when the content
    does not). Nothing is parsed: `count_units` does that, in an extraction process.

    Raises:
        InvalidInput: the file is empty, of an unsupported type (the message names the
            supported ones), a damaged or encrypted ZIP, over a ZIP limit (the message names
            the setting), or a book with DRM. `filename` is in every message.
    """
    return _detect(path, filename, zip_limits or ZipLimits())


def unit_of(media_type: str) -> Unit:
    """What the units of a document of `media_type` are."""
    return _UNITS.get(media_type, Unit.SECTION)


def mupdf_filetype(media_type: str) -> str:
    """PyMuPDF's `filetype` for a media type it reads (`KeyError` for another)."""
    return _MUPDF[media_type]


def count_units(path: Path, filename: str, media_type: str, *, max_pages: int) -> int:
    """Counts the units of a file of `media_type` (from `detect_type`) and enforces the limits.

    Parses the file (PDFs are not read past their page tree; other formats whole): run it in
    an extraction process, never in the API process.

    Raises:
        InvalidInput: the file is corrupt or truncated, encrypted, not text after all, has no
            pages, or has more than `max_pages` units (the message gives the limit).
            `filename` is in every message.
    """
    label = repr(filename)
    unit = unit_of(media_type)
    if media_type in _MUPDF:
        with _open_mupdf(path, media_type, label) as doc:
            count = _page_count(doc, media_type, label)
    else:
        count = len(_cached_text_units(path, media_type, label).texts)
    if count == 0:
        raise InvalidInput(f"{filename!r} has no pages")
    if count > max_pages:
        what = _NOUNS[unit] + (f" ({ROWS_PER_UNIT} rows each)" if unit is Unit.ROWS else "")
        raise InvalidInput(f"{filename!r} has {count} {what}; the limit is {max_pages}")
    return count


def inspect_file(
    path: Path, filename: str, *, max_pages: int, zip_limits: ZipLimits | None = None
) -> Inspection:
    """`detect_type` then `count_units`, in the calling process (tools and tests).

    Raises:
        InvalidInput: as `detect_type` and `count_units`.
    """
    media_type = detect_type(path, filename, zip_limits=zip_limits)
    count = count_units(path, filename, media_type, max_pages=max_pages)
    return Inspection(media_type=media_type, unit=unit_of(media_type), unit_count=count)


def extract_units(
    path: Path, media_type: str, start: int, stop: int, *, ocr: OcrOptions | None = None
) -> Extracted:
    """Reads the texts of units `[start, stop)` (0-based) of a file `count_units` accepted.

    Picklable and self-contained, for an extraction process (`extraction.py`). PyMuPDF
    formats read just those pages (the last document opened stays open in the process for the
    next batch); a PDF, XPS or CBZ page is read by OCR as `ocr` says (default: `OcrOptions()`,
    pages without text), and a PDF page's ruled tables come out as Markdown tables in place
    of their words. Other formats are parsed whole once: the last file's units stay cached in
    the process, so counting and consecutive batches of one file parse it once.

    Raises:
        ValueError: when not `0 <= start <= stop <= unit count`.
        InvalidInput: the file turned out damaged (a page could not be read), or a page
            needs OCR and Tesseract's language data is missing (the message says what to
            install).
        ExtractionLimit: (in an extraction process) OCR of a page passed its timeout.
    """
    label = f"the {_NAMES[media_type]} file"
    if media_type not in _MUPDF:
        parsed = _cached_text_units(path, media_type, label)
        _check_range(start, stop, len(parsed.texts))
        headings = [[Heading("", path)] if path else [] for path in parsed.paths[start:stop]]
        return Extracted(
            list(parsed.texts[start:stop]),
            headings=headings if any(headings) else [],
        )
    options = ocr or OcrOptions()
    mode = options.mode if media_type in _OCR_FORMATS else OcrMode.OFF
    stat = path.stat()
    # A fresh document every MUPDF_STORE_PAGES pages: MuPDF keeps what it loaded of one.
    epoch = start // MUPDF_STORE_PAGES
    doc = _cached_mupdf(str(path), media_type, stat.st_mtime_ns, stat.st_size, epoch)
    _check_range(start, stop, _page_count(doc, media_type, label))
    texts: list[str] = []
    ocr_pages = 0
    for number in range(start, stop):
        try:
            page = doc.load_page(number)
            text = _pdf_page_text(page) if media_type == PDF else page.get_text("text", sort=False)
        except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
            raise
        except Exception as exc:  # a page that fails to parse means a damaged file
            raise InvalidInput(f"{label} is damaged: page {number + 1} could not be read") from exc
        if needs_ocr(page, text, mode):
            text = ocr_page(page, options, label)
            ocr_pages += 1
        texts.append(repair_surrogates(text))
    headings = paths_from_toc(doc.get_toc(simple=True), start, stop)
    # MuPDF keeps decoded fonts and objects in its store (up to 256 MiB): empty it every
    # `MUPDF_STORE_PAGES` pages, so that memory does not follow the document's size.
    # (Emptying it after every batch of 16 pages doubled the extraction time.)
    if epoch != stop // MUPDF_STORE_PAGES:
        tools: Any = pymupdf.TOOLS
        tools.store_shrink(100)
    return Extracted(texts, ocr_pages, headings if any(headings) else [])


def no_text_message(filename: str, media_type: str, *, ocr: OcrMode = OcrMode.AUTO) -> str:
    """The reason to give when every unit of a document came out blank (`ocr`: the mode
    the document was read with)."""
    if media_type in _OCR_FORMATS and ocr is not OcrMode.OFF:
        what = "holds only images" if media_type == CBZ else "has no text layer"
        return f"{filename!r} {what}, and OCR found no text in it (blank or pictures only?)"
    off = "; OCR is off (OCR=off)"
    if media_type == PDF:
        return f"{filename!r} has no text layer (a scanned PDF?){off}"
    if media_type == CBZ:
        return f"{filename!r} holds only images (a comic book archive){off}"
    if media_type in _MUPDF:
        return f"{filename!r} has no text (only images?)"
    return f"{filename!r} contains no text"


def _pdf_page_text(page: Any) -> str:
    """The text of a PDF page, its ruled tables (`find_tables`) as Markdown tables where
    their first line was, their words not repeated."""
    text: str = page.get_text("text", sort=False)
    # `find_tables` costs ~30 times the text itself: only where a ruled table can be.
    if not may_hold_ruled_table(page):
        return text
    # use_layout=False: the line-based finder, not the ONNX layout model of pymupdf-layout.
    tables = page.find_tables(use_layout=False).tables
    if not tables:
        return text
    areas = []
    rendered = []
    for table in tables:
        rows = table.extract()
        area = _Rect(table.bbox)
        if table.header.external:  # the header row sits above the table's box
            rows = [table.header.names, *rows]
            area |= _Rect(table.header.bbox)
        areas.append(area)
        rendered.append(markdown_table(rows))
    out: list[str] = []
    emitted: set[int] = set()
    for block in page.get_text("dict", sort=False)["blocks"]:
        for line in block.get("lines", ()):
            box = _Rect(line["bbox"])
            centre = _Point((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
            inside = next((i for i, area in enumerate(areas) if centre in area), None)
            if inside is None:
                out.append("".join(span["text"] for span in line["spans"]) + "\n")
            elif inside not in emitted:
                emitted.add(inside)
                out.append(f"\n{rendered[inside]}\n\n")
    out.extend(f"\n{rendered[i]}\n\n" for i in range(len(rendered)) if i not in emitted)
    return "".join(out)


_SNAP = float(pymupdf.table.DEFAULT_SNAP_TOLERANCE)
_MAX_PATHS_CHECKED = 2000


def may_hold_ruled_table(page: Any) -> bool:
    """False only when PyMuPDF's `find_tables` (the `lines` strategy, default settings) cannot
    find a table on `page`: a cheap necessary condition, read from the page's drawings.

    `find_tables` keeps only tables of at least two columns, whose cells come from the
    crossings of horizontal and vertical edges: so at least three distinct vertical edge
    positions and two horizontal ones. Its edges are the axis-parallel segments of drawn
    lines, the sides of rectangles and quads, and the borders of each cluster of touching
    paths (their rectangles within the snap tolerance) that holds a character. This counts
    the distinct coordinates of a superset of those edges (snapping and clipping only merge
    them): every such segment and side, and the borders of every cluster that overlaps a word
    and is at least 1 pt tall (a thinner one holds no glyph). Rotated pages, and pages of
    more than `_MAX_PATHS_CHECKED` paths, are left to `find_tables`.
    """
    paths = page.get_cdrawings()
    if not paths:
        return False
    if page.rotation or len(paths) > _MAX_PATHS_CHECKED:
        return True
    xs: set[float] = set()
    ys: set[float] = set()

    def enough() -> bool:
        return len(xs) >= 3 and len(ys) >= 2

    for path in paths:
        items = path["items"]
        if path.get("closePath") and items and items[0][0] == "l" and items[-1][0] == "l":
            items = [*items, ("l", items[-1][2], items[0][1])]  # as `find_tables` closes it
        for item in items:
            if item[0] == "l":
                (x1, y1), (x2, y2) = item[1], item[2]
                if y1 == y2:  # `find_tables`: horizontal when top == bottom, else vertical
                    ys.add(y1)
                elif abs(x1 - x2) <= _SNAP or abs(y1 - y2) <= _SNAP:
                    xs.update((x1, x2))
            elif item[0] == "re":
                x0, y0, x1, y1 = item[1]
                xs.update((x0, x1))
                ys.update((y0, y1))
            elif item[0] == "qu":
                for x, y in item[1]:
                    xs.add(x)
                    ys.add(y)
    if enough():
        return True
    words: list[Any] | None = None
    for x0, y0, x1, y1 in _path_clusters([tuple(path["rect"]) for path in paths]):
        if y1 - y0 < 1.0 or x1 <= x0:
            continue
        if words is None:
            words = page.get_text("words")
        if any(w[0] <= x1 and w[2] >= x0 and w[1] <= y1 and w[3] >= y0 for w in words):
            xs.update((x0, x1))
            ys.update((y0, y1))
            if enough():
                return True
    return False


def _path_clusters(rects: list[tuple[float, ...]]) -> Iterator[tuple[float, float, float, float]]:
    """The enveloping rectangles of touching path rectangles, as `find_tables` joins them
    (its `clean_graphics`: neighbours within the snap tolerance)."""

    def near(a: list[float], b: tuple[float, ...]) -> bool:
        return (
            (b[0] - _SNAP <= a[0] <= b[2] + _SNAP or b[0] - _SNAP <= a[2] <= b[2] + _SNAP)
            and (b[1] - _SNAP <= a[1] <= b[3] + _SNAP or b[1] - _SNAP <= a[3] <= b[3] + _SNAP)
        ) or (
            (a[0] - _SNAP <= b[0] <= a[2] + _SNAP or a[0] - _SNAP <= b[2] <= a[2] + _SNAP)
            and (a[1] - _SNAP <= b[1] <= a[3] + _SNAP or a[1] - _SNAP <= b[3] <= a[3] + _SNAP)
        )

    pending = sorted(set(rects), key=lambda r: (r[3], r[0]))
    while pending:
        box = list(pending[0])
        grown = True
        while grown:
            grown = False
            for i in range(len(pending) - 1, 0, -1):
                if near(box, pending[i]):
                    other = pending.pop(i)
                    box = [
                        min(box[0], other[0]),
                        min(box[1], other[1]),
                        max(box[2], other[2]),
                        max(box[3], other[3]),
                    ]
                    grown = True
        del pending[0]
        yield box[0], box[1], box[2], box[3]


def _check_range(start: int, stop: int, count: int) -> None:
    if not 0 <= start <= stop <= count:
        raise ValueError(f"units [{start}, {stop}) are out of range for {count} units")


def _unsupported(label: str, what: str) -> InvalidInput:
    return InvalidInput(f"{label} is {what}, which is not supported; supported: {SUPPORTED}")


def _detect(path: Path, filename: str, zip_limits: ZipLimits) -> str:
    label = repr(filename)
    with path.open("rb") as file:
        head = file.read(_SNIFF)
    if not head:
        raise InvalidInput(f"{label} is empty")
    # PDF readers accept the header anywhere in the first KiB (PDF 32000-1, annex H.3).
    if PDF_MAGIC in head[:1024]:
        return PDF
    if head[60:68] == b"BOOKMOBI":  # Palm database type and creator
        # Record 0 starts with the PalmDOC header, whose bytes 12-13 name the DRM scheme.
        record0 = int.from_bytes(head[78:82], "big")
        if head[record0 + 12 : record0 + 14].strip(b"\0"):
            raise InvalidInput(f"{label} is encrypted (DRM); upload a copy without DRM")
        return MOBI
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(path, label, zip_limits)
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            raise _unsupported(label, what)
    complete = len(head) < _SNIFF
    sample = _decode_sample(head, label, complete=complete)
    start = sample.lstrip().lower()
    if start.startswith("<?xml") and "<fictionbook" in start:
        return FB2
    if _starts_html(start):
        return HTML
    by_name = _TEXT_EXTENSIONS.get(Path(filename).suffix.lower())
    if by_name:
        return by_name
    if start.startswith("<") and _HTML_TAG.search(start):
        return HTML
    if _looks_like_csv(sample, complete=complete):
        return CSV
    return MARKDOWN if _looks_like_markdown(sample) else TEXT


def _starts_html(start: str) -> bool:
    """Whether lowercased text opens as an HTML document: an optional XML declaration and
    comments, then a doctype or an `<html>` tag. A scan with `str.find`, in linear time."""
    at = 0
    if start.startswith("<?xml"):
        at = start.find(">")
        if at < 0:
            return False
        at += 1
    while True:
        while at < len(start) and start[at].isspace():
            at += 1
        if not start.startswith("<!--", at):
            break
        end = start.find("-->", at + 4)
        if end < 0:
            return False
        at = end + 3
    if start.startswith("<!doctype html", at):
        return True
    return start.startswith("<html", at) and (
        at + 5 < len(start) and (start[at + 5] == ">" or start[at + 5].isspace())
    )


def _looks_like_markdown(sample: str) -> bool:
    if _MARKDOWN_HINT.search(sample):
        return True
    # A setext heading: a line of text underlined with = or -.
    lines = sample.split("\n")
    return any(
        previous[:1].strip() and _SETEXT_UNDERLINE.fullmatch(line)
        for previous, line in itertools.pairwise(lines)
    )


def _decode_sample(head: bytes, label: str, *, complete: bool) -> str:
    """The first `_SNIFF` bytes as text (a character cut at the end is dropped)."""
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=complete)
    except UnicodeDecodeError:
        best = charset_normalizer.from_bytes(head).best()
        if best is None:
            raise _unsupported(label, "binary data of an unknown type") from None
        text = str(best)
    _refuse_binary(text, label)
    return text


def _refuse_binary(text: str, label: str) -> None:
    controls = sum(1 for char in text[:_SNIFF] if char < " " and char not in "\t\n\r\f")
    if "\x00" in text or controls > len(text[:_SNIFF]) // 100:
        raise _unsupported(label, "binary data of an unknown type")


def _detect_zip(path: Path, label: str, limits: ZipLimits) -> str:
    _check_zip_directory(path, label, limits)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_zip_members(archive, label, limits)
            names = set(archive.namelist())
            if any(info.flag_bits & 1 for info in archive.infolist()):
                raise InvalidInput(f"{label} is encrypted; upload it without a password")
            if _member(archive, "mimetype").strip() == EPUB.encode() or (
                "META-INF/container.xml" in names and any(n.endswith(".opf") for n in names)
            ):
                _refuse_epub_drm(archive, names, label)
                return EPUB
            if "word/document.xml" in names:
                return DOCX
            if "xl/workbook.xml" in names:
                return XLSX
            if "ppt/presentation.xml" in names:
                return PPTX
            if any(name.lower().endswith(".fdseq") for name in names) or (
                "_rels/.rels" in names and b"fixedrepresentation" in _member(archive, "_rels/.rels")
            ):
                return XPS
            files = [name.lower() for name in names if not name.endswith("/")]
            if any(name.endswith(_IMAGES) for name in files) and all(
                name.endswith((*_IMAGES, ".xml", ".txt")) for name in files
            ):
                return CBZ
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
        raise InvalidInput(
            f"{label} is a damaged ZIP-based document (corrupt or truncated)"
        ) from exc
    raise _unsupported(
        label, "a ZIP archive but not an EPUB, DOCX, XLSX, PPTX, XPS or CBZ document"
    )


def _check_zip_directory(path: Path, label: str, limits: ZipLimits) -> None:
    """Refuses an archive whose end-of-central-directory record declares more than
    `max_entries` entries, before `zipfile` reads the directory itself."""
    size = path.stat().st_size
    with path.open("rb") as file:
        file.seek(max(0, size - _EOCD_SEARCH))
        tail = file.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        raise InvalidInput(f"{label} is a damaged ZIP-based document (corrupt or truncated)")
    entries = int.from_bytes(tail[at + 10 : at + 12], "little")
    locator = at - 20
    if entries == 0xFFFF and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        # ZIP64: the count is in the ZIP64 end record the locator points to.
        offset = int.from_bytes(tail[locator + 8 : locator + 16], "little")
        with path.open("rb") as file:
            file.seek(offset)
            record = file.read(56)
        if record[:4] == b"PK\x06\x06":
            entries = int.from_bytes(record[32:40], "little")
    if entries > limits.max_entries:
        raise _zip_limit(label, f"{entries} entries", f"{limits.max_entries}", "ZIP_MAX_ENTRIES")


def _check_zip_members(archive: zipfile.ZipFile, label: str, limits: ZipLimits) -> None:
    """Refuses an archive by the sizes its central directory declares (zip bombs). A member
    whose data holds more than it declares is left to the extraction process's memory cap."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise _zip_limit(label, f"{len(infos)} entries", f"{limits.max_entries}", "ZIP_MAX_ENTRIES")
    total = sum(info.file_size for info in infos)
    if total > limits.max_uncompressed_bytes:
        raise _zip_limit(
            label,
            f"{total} bytes uncompressed",
            f"{limits.max_uncompressed_bytes} bytes",
            "ZIP_MAX_UNCOMPRESSED_BYTES",
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= _RATIO_FLOOR and ratio > limits.max_ratio:
            raise _zip_limit(
                label,
                f"a member compressed {ratio:.0f} to 1 ({info.filename!r})",
                f"{limits.max_ratio:g} to 1",
                "ZIP_MAX_RATIO",
            )


def _zip_limit(label: str, found: str, limit: str, setting: str) -> InvalidInput:
    return InvalidInput(f"{label} holds {found}; the limit is {limit} ({setting})")


_EOCD_SEARCH = 22 + 65535 + 20  # the end record, its longest comment, a ZIP64 locator


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    """The start of a member (empty when it is missing): enough to sniff, never a zip bomb."""
    if name not in archive.NameToInfo:
        return b""
    with archive.open(name) as member:
        return member.read(_MAX_META)


def _refuse_epub_drm(archive: zipfile.ZipFile, names: set[str], label: str) -> None:
    encryption = "META-INF/encryption.xml"
    algorithms = set()
    if encryption in names:
        algorithms = set(_ALGORITHM.findall(_member(archive, encryption)))
    # Adobe DRM has rights.xml; any cipher other than font obfuscation hides the text.
    if "META-INF/rights.xml" in names or {a.decode() for a in algorithms} - _FONT_OBFUSCATION:
        raise InvalidInput(f"{label} is encrypted (DRM); upload a copy without DRM")


def _open_mupdf(path: Path, media_type: str, label: str) -> Any:
    kind = _NAMES[media_type]
    try:
        doc = _open(str(path), filetype=_MUPDF[media_type])
    except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
        raise
    except Exception as exc:  # PyMuPDF raises several types for damaged files
        raise InvalidInput(f"{label} is not a readable {kind} (corrupt or truncated)") from exc
    # MuPDF rebuilds a PDF cut short without a word, and the pages it lost read as empty.
    if media_type == PDF and doc.is_repaired and not _ends_with_eof(path):
        doc.close()
        raise InvalidInput(f"{label} is not a readable PDF (corrupt or truncated)")
    if doc.needs_pass or doc.is_encrypted:
        doc.close()
        raise InvalidInput(f"{label} is encrypted; upload it without a password")
    return doc


def _ends_with_eof(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 1024))
        return PDF_EOF in file.read()


def _page_count(doc: Any, media_type: str, label: str) -> int:
    try:
        count: int = doc.page_count  # lays out the whole book for EPUB, MOBI and FB2
    except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
        raise
    except Exception as exc:  # layout of a damaged book fails
        kind = _NAMES[media_type]
        raise InvalidInput(f"{label} is not a readable {kind} (corrupt or truncated)") from exc
    return count


def _read_text(path: Path, label: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        best = charset_normalizer.from_bytes(data).best()
        if best is None:
            raise _unsupported(label, "binary data of an unknown type") from None
        text = str(best)
    _refuse_binary(text, label)
    return text


def _looks_like_csv(sample: str, *, complete: bool) -> bool:
    """Whether the first lines split into the same number (2 or more) of fields for one of
    the usual delimiters. `csv.reader` only: `csv.Sniffer`'s patterns take quadratic time."""
    lines = [line for line in sample.splitlines()[:20] if line.strip()]
    if not complete:
        lines = lines[:-1]  # cut off mid-line
    if len(lines) < 2:
        return False
    for delimiter in ",;\t|":
        try:
            widths = {len(row) for row in csv.reader(lines, delimiter=delimiter)}
        except csv.Error:
            continue
        if len(widths) == 1 and widths.pop() >= 2:
            return True
    return False


@functools.lru_cache(maxsize=1)
def _cached_mupdf(path: str, media_type: str, mtime_ns: int, size: int, epoch: int) -> Any:
    """The last PyMuPDF document opened by this process, kept open for the next batch of
    the same file (opening again cost 40 % more than the extraction itself, measured on the
    corpus in batches of 16 pages). PyMuPDF closes it when it is evicted and collected."""
    return _open_mupdf(Path(path), media_type, f"the {_NAMES[media_type]} file")


@dataclass(frozen=True, slots=True)
class _TextUnits:
    """A text-like file's units and the heading path each sits under."""

    texts: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]


_last_text_units: tuple[tuple[str, str, int, int], _TextUnits] | None = None


def _cached_text_units(path: Path, media_type: str, label: str) -> _TextUnits:
    """The units of a text-like file; the last file's stay in the process, so counting and
    each batch of one file parse it once (`label` names the file in errors only)."""
    global _last_text_units
    stat = path.stat()
    # `mtime_ns` and `size` are in the key so that a changed file is parsed again.
    key = (str(path), media_type, stat.st_mtime_ns, stat.st_size)
    if _last_text_units is None or _last_text_units[0] != key:
        _last_text_units = None  # let the old units go before parsing the next file
        _last_text_units = (key, _text_units(path, media_type, label))
    return _last_text_units[1]


def _text_units(path: Path, media_type: str, label: str) -> _TextUnits:
    if media_type == DOCX:
        return _sections(_docx_blocks(path, label))
    if media_type in (XLSX, PPTX):
        read = office.xlsx_units if media_type == XLSX else office.pptx_units
        units = read(path, label)
        # Each unit opens with its sheet's name or its slide's title as a Markdown heading.
        paths = tuple(
            (_heading_title(unit),) if unit.startswith("#") and _heading_title(unit) else ()
            for unit in units
        )
        return _TextUnits(tuple(units), paths)
    text = _read_text(path, label)
    if media_type == CSV:
        units = _csv_units(text, label)
        return _TextUnits(tuple(units), ((),) * len(units))
    if media_type == HTML:
        return _sections(_html_blocks(text))
    if media_type == MARKDOWN:
        return _sections(_markdown_blocks(text))
    return _sections((0, block) for block in _BLANK_LINE.split(text))


def _sections(blocks: Iterable[tuple[int, str]]) -> _TextUnits:
    """Groups `(heading level, text)` blocks (level 0: body) into units: a heading opens a
    unit once the current one has body text, and a unit is closed before it would pass
    `SECTION_CHARS`. Each unit's path: the headings in force where its first body starts."""
    units: list[list[str]] = [[]]
    paths: list[tuple[str, ...]] = [()]
    stack: list[tuple[int, str]] = []
    size, has_body = 0, False
    for level, block in blocks:
        if level:
            name = _heading_title(block)
            while stack and stack[-1][0] >= level:
                stack.pop()
            if name:
                stack.append((level, name))
        for piece in _pieces(block.strip()):
            if (level and has_body) or (size and size + len(piece) > SECTION_CHARS):
                units.append([])
                paths.append(())
                size, has_body = 0, False
            units[-1].append(piece)
            if not has_body:
                paths[-1] = tuple(heading for _, heading in stack)
            size += len(piece) + 2
            has_body = has_body or not level
    return _TextUnits(tuple("\n\n".join(unit) for unit in units), tuple(paths))


def _heading_title(text: str) -> str:
    """A heading block's words: its first line without Markdown's `#` marks."""
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    return " ".join(line.strip().strip("#").split())


def _pieces(text: str) -> Iterator[str]:
    """`text` cut into pieces of at most `SECTION_CHARS`; a table (a block that is one) by
    whole rows with its header repeated."""
    spans = table_spans(text) if text.startswith("|") else []
    if len(text) > SECTION_CHARS and len(spans) == 1 and spans[0].start == 0:
        pieces = split_table(text, spans[0], SECTION_CHARS)
        if pieces is not None:
            yield from (piece for _, _, piece in pieces)
            return
    while len(text) > SECTION_CHARS:
        cut = max(text.rfind("\n", 0, SECTION_CHARS), text.rfind(" ", 0, SECTION_CHARS))
        cut = cut if cut > SECTION_CHARS // 2 else SECTION_CHARS
        yield text[:cut].strip()
        text = text[cut:].strip()
    if text:
        yield text


def _docx_blocks(path: Path, label: str) -> list[tuple[int, str]]:
    """`(heading level, text)` blocks (`Title` 1, `Heading n` n + 1, body 0)."""
    try:
        document = docx.Document(str(path))
        blocks: list[tuple[int, str]] = []
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                blocks.append((0, markdown_table(_docx_rows(item))))
            else:
                style = item.style.name if item.style is not None else ""
                blocks.append((_docx_level(style or ""), item.text))
    except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
        raise
    except Exception as exc:  # python-docx raises zip, XML and key errors for damaged files
        raise InvalidInput(f"{label} is not a readable DOCX (corrupt or truncated)") from exc
    return blocks


def _docx_level(style: str) -> int:
    """A paragraph style's heading level: `Title` 1, `Heading n` n + 1, other styles 0."""
    if style.startswith("Title"):
        return 1
    if style.startswith("Heading"):
        number = style.removeprefix("Heading").strip()
        return int(number) + 1 if number.isdecimal() and len(number) < 3 else 2
    return 0


def _docx_rows(table: Table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # A merged cell repeats in each grid column it spans: its text goes in the first.
            cells.append("" if cell._tc is previous else cell.text)
            previous = cell._tc
        rows.append(cells)
    return rows


def _html_rows(table: Tag) -> list[list[str]]:
    rows = []
    for row in table.find_all("tr"):
        if row.find_parent("table") is table:
            cells = row.find_all(["th", "td"])
            rows.append([cell.get_text(" ") for cell in cells if cell.find_parent("tr") is row])
    return rows


def _html_blocks(text: str) -> list[tuple[int, str]]:
    """`(heading level, text)` blocks (`h1`..`h6` their level, others 0)."""
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup.find_all(["head", "script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    # Each outermost table becomes a Markdown table, its place kept by a \x03 marker.
    tables: list[str] = []
    for table in soup.find_all("table"):
        if table.find_parent("table") is None:
            tables.append(markdown_table(_html_rows(table)))
            table.replace_with(NavigableString(f"\x02\x03{len(tables) - 1}\x02"))
    # \x02 separates blocks and \x01 marks headings; source line breaks are only spaces.
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\x02")
        tag.insert_after("\x02")
    for tag in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        tag.insert(0, "\x01" + tag.name[1])
    for tag in soup.find_all("br"):
        tag.replace_with("\x02")
    blocks: list[tuple[int, str]] = []
    for block in soup.get_text().split("\x02"):
        if block.startswith("\x03") and block[1:].isdecimal() and int(block[1:]) < len(tables):
            blocks.append((0, tables[int(block[1:])]))
            continue
        mark = _HTML_HEADING.search(block)
        level = int(mark.group(1)) if mark else 0
        blocks.append((level, " ".join(_HTML_HEADING.sub(" ", block).replace("\x01", " ").split())))
    return blocks


def _markdown_blocks(text: str) -> Iterator[tuple[int, str]]:
    lines = text.splitlines()
    # Top-level block tokens map to their source lines; the source is kept as the text.
    for token in MarkdownIt("commonmark").parse(text):
        if token.level == 0 and token.nesting >= 0 and token.map:
            first, last = token.map
            level = int(token.tag[1]) if token.type == "heading_open" else 0
            yield level, "\n".join(lines[first:last])


def _csv_units(text: str, label: str) -> list[str]:
    try:
        dialect: Any = csv.Sniffer().sniff(text[:_SNIFF], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), dialect) if any(row)]
    except csv.Error as exc:
        raise InvalidInput(f"{label} is not a readable CSV file: {exc}") from exc
    if not rows:
        return [""]
    header, body = rows[0], rows[1:]
    return [
        markdown_table([header, *body[start : start + ROWS_PER_UNIT]])
        for start in range(0, max(len(body), 1), ROWS_PER_UNIT)
    ]
