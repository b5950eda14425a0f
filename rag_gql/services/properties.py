"""The properties a file states about itself: title, author, and when it was authored.

Read in an extraction process (`extraction.py`) when a document is indexed: PDF (its info
dictionary, else its XMP packet), EPUB (its OPF package document), XPS, MOBI and FB2 (what
MuPDF reports), DOCX, XLSX and PPTX (their core properties, ECMA-376 part 2), HTML (`<title>`,
`<meta name="author">`, `<meta name="date">` and the like). Anything absent, blank or
unreadable is None: a file's properties never fail its ingestion.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import docx
import openpyxl
import pptx
import pymupdf
from bs4 import BeautifulSoup

from rag_gql.services import parsing

MAX_PROPERTY_LENGTH = 1000
"""Characters kept of a title or an author."""
_MAX_XML = 1 << 20  # bytes read of an XML member (zip bombs)
_PDF_DATE = re.compile(
    r"D?:?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?\s*(?:([Zz+-])(\d{2})?'?(\d{2})?'?)?"
)
_DC = "{http://purl.org/dc/elements/1.1/}"
_HTML_DATES = ("date", "dcterms.created", "dc.date", "article:published_time", "created")
_open: Any = pymupdf.open


@dataclass(frozen=True, slots=True)
class FileProperties:
    """A file's own title, author and authoring time (aware, UTC); None when absent."""

    title: str | None = None
    author: str | None = None
    authored_at: datetime | None = None


def file_properties(path: Path, media_type: str) -> FileProperties:
    """The properties of a file of `media_type` (`parsing.detect_type`'s). Picklable, for an
    extraction process; never raises for a damaged file (it gives `FileProperties()`)."""
    try:
        found = _read(path, media_type)
    except MemoryError:  # PARSE_MAX_MEMORY's doing
        raise
    except Exception:  # a damaged file has no properties; its text decides its fate
        return FileProperties()
    return FileProperties(_text(found.title), _text(found.author), found.authored_at)


def _read(path: Path, media_type: str) -> FileProperties:
    if media_type == parsing.EPUB:
        return _epub(path)
    if media_type in (parsing.PDF, parsing.XPS, parsing.MOBI, parsing.FB2):
        return _mupdf(path, media_type)
    if media_type == parsing.DOCX:
        return _core(docx.Document(str(path)).core_properties)
    if media_type == parsing.PPTX:
        return _core(pptx.Presentation(str(path)).core_properties)
    if media_type == parsing.XLSX:
        book = openpyxl.load_workbook(path, read_only=True)
        try:
            p = book.properties
            return FileProperties(p.title, p.creator, _aware(p.created))
        finally:
            book.close()
    if media_type == parsing.HTML:
        return _html(path)
    return FileProperties()


def _mupdf(path: Path, media_type: str) -> FileProperties:
    with _open(str(path), filetype=parsing.mupdf_filetype(media_type)) as doc:
        info = doc.metadata or {}
        found = FileProperties(
            info.get("title"), info.get("author"), pdf_date(info.get("creationDate") or "")
        )
        if media_type == parsing.PDF and not (found.title and found.author and found.authored_at):
            xmp = _xmp(doc.get_xml_metadata() or "")
            found = FileProperties(
                found.title or xmp.title,
                found.author or xmp.author,
                found.authored_at or xmp.authored_at,
            )
        return found


def _xmp(packet: str) -> FileProperties:
    """dc:title, dc:creator and xmp:CreateDate of an XMP packet (ISO 16684-1)."""
    if not packet.strip():
        return FileProperties()
    root = _xml(packet.encode()[:_MAX_XML])
    title = _first_text(root, f"{_DC}title")
    author = _first_text(root, f"{_DC}creator")
    created = None
    for element in root.iter():
        if element.tag.endswith("}CreateDate") and element.text:
            created = iso_date(element.text)
        for name, value in element.attrib.items():
            if name.endswith("}CreateDate"):
                created = created or iso_date(value)
    return FileProperties(title, author, created)


def _epub(path: Path) -> FileProperties:
    """dc:title, dc:creator and dc:date of the EPUB's package document (EPUB 3, OPF)."""
    with zipfile.ZipFile(path) as archive:
        container = _xml(_member(archive, "META-INF/container.xml"))
        rootfile = next(
            (e.get("full-path") for e in container.iter() if e.tag.endswith("}rootfile")), None
        )
        if not rootfile:
            return FileProperties()
        opf = _xml(_member(archive, rootfile))
    date = _first_text(opf, f"{_DC}date")
    return FileProperties(
        _first_text(opf, f"{_DC}title"),
        _first_text(opf, f"{_DC}creator"),
        iso_date(date) if date else None,
    )


def _html(path: Path) -> FileProperties:
    with path.open("rb") as source:
        head = source.read(256 * 1024)  # the <head> is at the start
    soup = BeautifulSoup(head, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    metas = {
        str(m.get("name") or m.get("property") or "").lower(): str(m.get("content") or "")
        for m in soup.find_all("meta")
    }
    date = next((metas[name] for name in _HTML_DATES if metas.get(name)), None)
    return FileProperties(title, metas.get("author"), iso_date(date) if date else None)


def _core(core: Any) -> FileProperties:
    """Office core properties (python-docx's and python-pptx's `CoreProperties`)."""
    return FileProperties(core.title, core.author, _aware(core.created))


def pdf_date(value: str) -> datetime | None:
    """A PDF date string (ISO 32000-1 §7.9.4, `D:YYYYMMDDHHmmSSOHH'mm'`) as an aware UTC
    time; None when it is not one. Without an offset, UTC is assumed."""
    match = _PDF_DATE.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    try:
        tz = UTC
        if sign in ("+", "-"):
            offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
            tz = timezone(offset if sign == "+" else -offset)
        local = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=tz,
        )
        return local.astimezone(UTC)
    except ValueError:
        return None


def iso_date(value: str) -> datetime | None:
    """An ISO 8601 date or time (`2024`, `2024-05-01`, `2024-05-01T10:00:00Z`) as an aware
    UTC time; None when it is not one. Without an offset, UTC is assumed."""
    text = value.strip()
    if re.fullmatch(r"\d{4}(-\d{2})?", text):
        text = f"{text}-01-01"[:10] if len(text) == 4 else f"{text}-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return _aware(parsed)


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _text(value: object) -> str | None:
    """A property's text: control characters out, whitespace collapsed, at most
    `MAX_PROPERTY_LENGTH` characters; None when blank."""
    if not isinstance(value, str):
        return None
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return text[:MAX_PROPERTY_LENGTH] or None


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    with archive.open(name) as member:
        return member.read(_MAX_XML)


def _xml(data: bytes) -> ElementTree.Element:
    # Expat (>= 2.4, as Python 3.11 ships) caps entity expansion and ElementTree resolves no
    # external entity; the input is at most `_MAX_XML` bytes.
    return ElementTree.fromstring(data)  # noqa: S314


def _first_text(root: ElementTree.Element, tag: str) -> str | None:
    """The text of the first `tag` element (or of its first child with text: XMP's
    `rdf:Alt`/`rdf:Seq` lists)."""
    for element in root.iter(tag):
        for node in element.iter():
            if node.text and node.text.strip():
                return node.text
    return None
