"""Turns uploaded bytes into page texts with PyMuPDF. Blocking: call it off the event loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pymupdf

from rag_gql.errors import InvalidInput

PDF_MAGIC = b"%PDF-"
PDF_EOF = b"%%EOF"


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


def parse_document(data: bytes, filename: str) -> ParsedDocument:
    """Extracts the text of every page of a PDF.

    The type is told by the content (the `%PDF-` magic bytes), not by the name.

    Raises:
        InvalidInput: empty, not a PDF, corrupt, encrypted, or without a text layer.
    """
    if not data:
        raise InvalidInput(f"{filename!r} is empty")
    # PDF readers accept the header anywhere in the first KiB (PDF 32000-1, annex H.3).
    if PDF_MAGIC not in data[:1024]:
        raise InvalidInput(f"{filename!r} is not a PDF; only PDF documents are supported for now")
    try:
        doc = _open(stream=data, filetype="pdf")
    except Exception as exc:  # PyMuPDF raises several types for damaged files
        raise InvalidInput(f"{filename!r} is not a readable PDF (corrupt or truncated)") from exc
    with doc:
        # MuPDF rebuilds a file cut short without a word, and the pages it lost read as empty.
        if doc.is_repaired and PDF_EOF not in data[-1024:]:
            raise InvalidInput(f"{filename!r} is not a readable PDF (corrupt or truncated)")
        if doc.needs_pass or doc.is_encrypted:
            raise InvalidInput(f"{filename!r} is encrypted; upload it without a password")
        if doc.page_count == 0:
            raise InvalidInput(f"{filename!r} has no pages")
        try:
            pages = [page.get_text("text", sort=False) for page in doc]
        except Exception as exc:  # a page that fails to parse means a damaged file
            raise InvalidInput(f"{filename!r} is damaged: a page could not be read") from exc
    if not any(p.strip() for p in pages):
        raise InvalidInput(
            f"{filename!r} has no text layer (a scanned PDF?); OCR is not supported yet"
        )
    return ParsedDocument(pages=pages, media_type="application/pdf")
