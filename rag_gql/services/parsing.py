"""Turns uploaded files into unit texts: pages, sections or blocks of rows. Blocking throughout.

Two steps. `inspect_file` runs at upload: it tells the type from the content, counts the units
and enforces the limits. `extract_units` runs later in a worker process, a batch of units per
call, so a big PDF is never held whole. Parsers: PyMuPDF for PDF, XPS, EPUB, MOBI, FB2 and
CBZ; python-docx for DOCX; BeautifulSoup for HTML; markdown-it-py for Markdown; the `csv`
module for CSV; charset-normalizer for the encoding of text files.
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import re
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import charset_normalizer
import docx
import pymupdf
from bs4 import BeautifulSoup
from docx.table import Table
from markdown_it import MarkdownIt

from rag_gql.errors import InvalidInput

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

SUPPORTED = "PDF, EPUB, XPS, MOBI, FB2, CBZ, DOCX, HTML, Markdown, plain text and CSV"
ROWS_PER_UNIT = 50
"""Data rows in one CSV unit (the header comes on top of each)."""
SECTION_CHARS = 4000
"""A section longer than this (about a page) is cut between paragraphs into several units."""

PDF_MAGIC = b"%PDF-"
PDF_EOF = b"%%EOF"


class Unit(enum.StrEnum):
    """What `Chunk.page` counts for a document."""

    PAGE = "PAGE"
    """PDF, XPS and CBZ pages; EPUB, MOBI and FB2 pages as PyMuPDF lays them out."""
    SECTION = "SECTION"
    """DOCX, HTML, Markdown: heading-delimited sections; plain text: paragraphs up to ~4 KB."""
    ROWS = "ROWS"
    """CSV: blocks of `ROWS_PER_UNIT` rows."""


# PyMuPDF's name for each format it opens.
_MUPDF = {PDF: "pdf", EPUB: "epub", XPS: "xps", MOBI: "mobi", FB2: "fb2", CBZ: "cbz"}
_NAMES = {
    **{media_type: name.upper() for media_type, name in _MUPDF.items()},
    DOCX: "DOCX",
    HTML: "HTML",
    MARKDOWN: "Markdown",
    TEXT: "plain text",
    CSV: "CSV",
}
_UNITS = {**dict.fromkeys(_MUPDF, Unit.PAGE), CSV: Unit.ROWS}
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
_HTML_START = re.compile(r"(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*(<!doctype html|<html[\s>])", re.S)
_MARKDOWN_HINT = re.compile(r"^(#{1,6}[ \t]+\S|```|~~~)|^\S.*\n(=+|-+)[ \t]*$|\]\([^)\s]+\)", re.M)
_BLOCK_TAGS = [
    *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption"),
    *("figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li"),
    *("main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul", "caption"),
]


@dataclass(frozen=True, slots=True)
class Inspection:
    """What `inspect_file` found: the type, what a unit is, and how many units there are."""

    media_type: str
    unit: Unit
    unit_count: int


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """The text of each page, in order (`pages[0]` is page 1), and the media type."""

    pages: list[str]
    media_type: str

    @property
    def page_count(self) -> int:
        """Number of pages."""
        return len(self.pages)


# `pymupdf.open` is `pymupdf.Document`, whose constructor has no type hints.
_open: Any = pymupdf.open
MUPDF_STORE_PAGES = 256
"""Pages after which an extraction process empties MuPDF's object store."""


def inspect_file(path: Path, filename: str, *, max_pages: int) -> Inspection:
    """Tells the type of an uploaded file from its content and counts its units.

    The type comes from magic bytes (and, for ZIP-based formats, the archive's members); text
    is decoded and sniffed, and the extension of `filename` only chooses between text formats
    (HTML, Markdown, CSV, plain text). PDFs are not read past their page tree; text formats are
    parsed whole.

    Raises:
        InvalidInput: the file is empty, of an unsupported type (the message names the
            supported ones), corrupt or truncated, encrypted, has no pages, or has more than
            `max_pages` units (the message gives the limit). `filename` is in every message.
    """
    label = repr(filename)
    media_type, text = _detect(path, filename)
    unit = _UNITS.get(media_type, Unit.SECTION)
    if media_type in _MUPDF:
        with _open_mupdf(path, media_type, label) as doc:
            count = _page_count(doc, media_type, label)
    else:
        count = len(_text_units(path, media_type, label, text))
    if count == 0:
        raise InvalidInput(f"{filename!r} has no pages")
    if count > max_pages:
        what = _NOUNS[unit] + (f" ({ROWS_PER_UNIT} rows each)" if unit is Unit.ROWS else "")
        raise InvalidInput(f"{filename!r} has {count} {what}; the limit is {max_pages}")
    return Inspection(media_type=media_type, unit=unit, unit_count=count)


def extract_units(path: Path, media_type: str, start: int, stop: int) -> list[str]:
    """Returns the texts of units `[start, stop)` (0-based) of a file `inspect_file` accepted.

    Picklable and self-contained, for a `ProcessPoolExecutor`. PyMuPDF formats read just those
    pages (the last document opened stays open in the process for the next batch). Other
    formats are parsed whole on each call; the last file's units stay cached in the process,
    so consecutive batches of one file parse it once.
    CBZ pages are images and give empty texts.

    Raises:
        ValueError: when not `0 <= start <= stop <= unit count`.
        InvalidInput: the file turned out damaged (a page could not be read).
    """
    label = f"the {_NAMES[media_type]} file"
    if media_type not in _MUPDF:
        stat = path.stat()
        units = _cached_text_units(str(path), media_type, stat.st_mtime_ns, stat.st_size)
        _check_range(start, stop, len(units))
        return list(units[start:stop])
    stat = path.stat()
    # A fresh document every MUPDF_STORE_PAGES pages: MuPDF keeps what it loaded of one.
    epoch = start // MUPDF_STORE_PAGES
    doc = _cached_mupdf(str(path), media_type, stat.st_mtime_ns, stat.st_size, epoch)
    _check_range(start, stop, _page_count(doc, media_type, label))
    texts: list[str] = []
    for number in range(start, stop):
        try:
            texts.append(doc.load_page(number).get_text("text", sort=False))
        except Exception as exc:  # a page that fails to parse means a damaged file
            raise InvalidInput(f"{label} is damaged: page {number + 1} could not be read") from exc
    # MuPDF keeps decoded fonts and objects in its store (up to 256 MiB): empty it every
    # `MUPDF_STORE_PAGES` pages, so that memory does not follow the document's size.
    # (Emptying it after every batch of 16 pages doubled the extraction time.)
    if epoch != stop // MUPDF_STORE_PAGES:
        tools: Any = pymupdf.TOOLS
        tools.store_shrink(100)
    return texts


def no_text_message(filename: str, media_type: str) -> str:
    """The reason to give when every unit of a document came out blank."""
    if media_type == PDF:
        return f"{filename!r} has no text layer (a scanned PDF?); OCR is not supported yet"
    if media_type == CBZ:
        return f"{filename!r} holds only images (a comic book archive); OCR is not supported yet"
    if media_type in _MUPDF:
        return f"{filename!r} has no text (only images?); OCR is not supported yet"
    return f"{filename!r} contains no text"


def parse_document(data: bytes, filename: str) -> ParsedDocument:
    """Extracts the text of every page of a PDF held in memory (`inspect_file` and
    `extract_units` over a temporary file). Other types are refused.

    Raises:
        InvalidInput: empty, not a PDF, corrupt, encrypted, or without a text layer.
    """
    if not data:
        raise InvalidInput(f"{filename!r} is empty")
    if PDF_MAGIC not in data[:1024]:
        raise InvalidInput(f"{filename!r} is not a PDF; only PDF documents are supported for now")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.pdf"
        path.write_bytes(data)
        inspection = inspect_file(path, filename, max_pages=sys.maxsize)
        pages = extract_units(path, inspection.media_type, 0, inspection.unit_count)
    if not any(page.strip() for page in pages):
        raise InvalidInput(no_text_message(filename, PDF))
    return ParsedDocument(pages=pages, media_type=PDF)


def _check_range(start: int, stop: int, count: int) -> None:
    if not 0 <= start <= stop <= count:
        raise ValueError(f"units [{start}, {stop}) are out of range for {count} units")


def _unsupported(label: str, what: str) -> InvalidInput:
    return InvalidInput(f"{label} is {what}, which is not supported; supported: {SUPPORTED}")


def _detect(path: Path, filename: str) -> tuple[str, str | None]:
    """The media type, and the decoded text for text formats."""
    label = repr(filename)
    with path.open("rb") as file:
        head = file.read(_SNIFF)
    if not head:
        raise InvalidInput(f"{label} is empty")
    # PDF readers accept the header anywhere in the first KiB (PDF 32000-1, annex H.3).
    if PDF_MAGIC in head[:1024]:
        return PDF, None
    if head[60:68] == b"BOOKMOBI":  # Palm database type and creator
        # Record 0 starts with the PalmDOC header, whose bytes 12-13 name the DRM scheme.
        record0 = int.from_bytes(head[78:82], "big")
        if head[record0 + 12 : record0 + 14].strip(b"\0"):
            raise InvalidInput(f"{label} is encrypted (DRM); upload a copy without DRM")
        return MOBI, None
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(path, label), None
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            raise _unsupported(label, what)
    text = _read_text(path, label)
    sample = text[:_SNIFF]
    start = sample.lstrip().lower()
    if start.startswith("<?xml") and "<fictionbook" in start:
        return FB2, None
    if _HTML_START.match(start):
        return HTML, text
    by_name = _TEXT_EXTENSIONS.get(Path(filename).suffix.lower())
    if by_name:
        return by_name, text
    if start.startswith("<") and re.search(r"<(body|div|p|h[1-6])[\s>]", start):
        return HTML, text
    if _looks_like_csv(sample):
        return CSV, text
    return (MARKDOWN if _MARKDOWN_HINT.search(sample) else TEXT), text


def _detect_zip(path: Path, label: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
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
    raise _unsupported(label, "a ZIP archive but not an EPUB, DOCX, XPS or CBZ document")


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
        algorithms = set(re.findall(rb'Algorithm="([^"]+)"', _member(archive, encryption)))
    # Adobe DRM has rights.xml; any cipher other than font obfuscation hides the text.
    if "META-INF/rights.xml" in names or {a.decode() for a in algorithms} - _FONT_OBFUSCATION:
        raise InvalidInput(f"{label} is encrypted (DRM); upload a copy without DRM")


def _open_mupdf(path: Path, media_type: str, label: str) -> Any:
    kind = _NAMES[media_type]
    try:
        doc = _open(str(path), filetype=_MUPDF[media_type])
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
    controls = sum(1 for char in text[:_SNIFF] if char < " " and char not in "\t\n\r\f")
    if "\x00" in text or controls > len(text[:_SNIFF]) // 100:
        raise _unsupported(label, "binary data of an unknown type")
    return text


def _looks_like_csv(sample: str) -> bool:
    lines = [line for line in sample.splitlines()[:20] if line.strip()]
    if len(sample) == _SNIFF:
        lines = lines[:-1]  # cut off mid-line
    if len(lines) < 2:
        return False
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|")
    except csv.Error:
        return False
    widths = {len(row) for row in csv.reader(lines, dialect)}
    return len(widths) == 1 and widths.pop() >= 2


@functools.lru_cache(maxsize=1)
def _cached_mupdf(path: str, media_type: str, mtime_ns: int, size: int, epoch: int) -> Any:
    """The last PyMuPDF document opened by this process, kept open for the next batch of
    the same file (opening again cost 40 % more than the extraction itself, measured on the
    corpus in batches of 16 pages). PyMuPDF closes it when it is evicted and collected."""
    return _open_mupdf(Path(path), media_type, f"the {_NAMES[media_type]} file")


@functools.lru_cache(maxsize=1)
def _cached_text_units(path: str, media_type: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    # `mtime_ns` and `size` are in the key so that a changed file is parsed again.
    return tuple(_text_units(Path(path), media_type, f"the {_NAMES[media_type]} file", None))


def _text_units(path: Path, media_type: str, label: str, text: str | None) -> list[str]:
    if media_type == DOCX:
        return _sections(_docx_blocks(path, label))
    if text is None:
        text = _read_text(path, label)
    if media_type == CSV:
        return _csv_units(text, label)
    if media_type == HTML:
        return _sections(_html_blocks(text))
    if media_type == MARKDOWN:
        return _sections(_markdown_blocks(text))
    return _sections((False, block) for block in re.split(r"\n[ \t\r\f\v]*\n", text))


def _sections(blocks: Iterable[tuple[bool, str]]) -> list[str]:
    """Groups `(is_heading, text)` blocks into units: a heading opens a unit once the current
    one has body text, and a unit is closed before it would pass `SECTION_CHARS`."""
    units: list[list[str]] = [[]]
    size, has_body = 0, False
    for heading, block in blocks:
        for piece in _pieces(block.strip()):
            if (heading and has_body) or (size and size + len(piece) > SECTION_CHARS):
                units.append([])
                size, has_body = 0, False
            units[-1].append(piece)
            size += len(piece) + 2
            has_body = has_body or not heading
    return ["\n\n".join(unit) for unit in units]


def _pieces(text: str) -> Iterator[str]:
    while len(text) > SECTION_CHARS:
        cut = max(text.rfind("\n", 0, SECTION_CHARS), text.rfind(" ", 0, SECTION_CHARS))
        cut = cut if cut > SECTION_CHARS // 2 else SECTION_CHARS
        yield text[:cut].strip()
        text = text[cut:].strip()
    if text:
        yield text


def _docx_blocks(path: Path, label: str) -> list[tuple[bool, str]]:
    try:
        document = docx.Document(str(path))
        blocks: list[tuple[bool, str]] = []
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                for row in item.rows:
                    cells = [cell.text.strip() for cell in row.cells]
                    # A merged cell repeats in each grid column it spans.
                    unique = [c for i, c in enumerate(cells) if c and (i == 0 or c != cells[i - 1])]
                    blocks.append((False, " | ".join(unique)))
            else:
                style = item.style.name if item.style is not None else ""
                blocks.append((bool(style) and style.startswith(("Heading", "Title")), item.text))
    except Exception as exc:  # python-docx raises zip, XML and key errors for damaged files
        raise InvalidInput(f"{label} is not a readable DOCX (corrupt or truncated)") from exc
    return blocks


def _html_blocks(text: str) -> Iterator[tuple[bool, str]]:
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup.find_all(["head", "script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    # \x02 separates blocks and \x01 marks headings; source line breaks are only spaces.
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\x02")
        tag.insert_after("\x02")
    for tag in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        tag.insert(0, "\x01")
    for tag in soup.find_all("br"):
        tag.replace_with("\x02")
    for block in soup.get_text().split("\x02"):
        yield "\x01" in block, " ".join(block.replace("\x01", " ").split())


def _markdown_blocks(text: str) -> Iterator[tuple[bool, str]]:
    lines = text.splitlines()
    # Top-level block tokens map to their source lines; the source is kept as the text.
    for token in MarkdownIt("commonmark").parse(text):
        if token.level == 0 and token.nesting >= 0 and token.map:
            first, last = token.map
            yield token.type == "heading_open", "\n".join(lines[first:last])


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
    units = []
    for start in range(0, max(len(body), 1), ROWS_PER_UNIT):
        out = io.StringIO()
        csv.writer(out, delimiter=dialect.delimiter, lineterminator="\n").writerows(
            [header, *body[start : start + ROWS_PER_UNIT]]
        )
        units.append(out.getvalue())
    return units
