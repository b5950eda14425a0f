"""Test PDFs generated with PyMuPDF, with known text per page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pymupdf as _pymupdf

# PyMuPDF's constructors carry no type hints.
pymupdf: Any = _pymupdf
_Document: Any = pymupdf.open


def make_pdf(pages: Sequence[str]) -> bytes:
    """Returns a PDF whose page i holds `pages[i]` as its text layer (A4, Helvetica 11 pt)."""
    doc = _Document()
    for text in pages:
        page = doc.new_page(width=595, height=842)
        page.insert_textbox(pymupdf.Rect(50, 50, 545, 792), text, fontsize=11, fontname="helv")
    data: bytes = doc.tobytes()
    doc.close()
    return data


def make_image_only_pdf() -> bytes:
    """Returns a one-page PDF with a drawing and no text layer (like a scan)."""
    doc = _Document()
    page = doc.new_page(width=595, height=842)
    page.draw_rect(pymupdf.Rect(100, 100, 400, 400), color=(0, 0, 0), fill=(0.5, 0.5, 0.5))
    data: bytes = doc.tobytes()
    doc.close()
    return data


def make_encrypted_pdf(text: str = "secret text") -> bytes:
    """Returns a PDF that needs a user password to open."""
    doc = _Document()
    page = doc.new_page()
    page.insert_text((72, 72), text)
    data: bytes = doc.tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user-pw", owner_pw="owner-pw"
    )
    doc.close()
    return data


def long_page(topic: str, sentences: int) -> str:
    """About 70 characters a sentence, in paragraphs of five: several chunks' worth."""
    lines = [
        f"Sentence {i} about {topic} explains detail number {i} with marker{topic}{i}."
        for i in range(sentences)
    ]
    paragraphs = [" ".join(lines[i : i + 5]) for i in range(0, len(lines), 5)]
    return "\n\n".join(paragraphs)


def make_scanned_pdf(pages: Sequence[str], *, dpi: int = 150) -> bytes:
    """Returns a PDF whose page i is a picture of `pages[i]` (real text rendered to a
    grayscale pixmap at `dpi`, inserted as an image), with no text layer: a scan."""
    source = _Document(stream=make_pdf(pages), filetype="pdf")
    doc = _Document()
    for page in source:
        png = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY).tobytes("png")
        doc.new_page(width=595, height=842).insert_image(pymupdf.Rect(0, 0, 595, 842), stream=png)
    data: bytes = doc.tobytes()
    doc.close()
    source.close()
    return data


def make_table_pdf(intro: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """Returns a one-page PDF: `intro` as text, then a table ruled with lines (as a word
    processor draws one), `header` its first row; one page of 20 pt rows."""
    doc = _Document()
    page = doc.new_page(width=595, height=842)
    page.insert_text((50, 60), intro, fontsize=11, fontname="helv")
    left, top, width, height = 50, 80, 495 / len(header), 20
    table = [list(header), *[list(row) for row in rows]]
    bottom = top + height * len(table)
    for r, row in enumerate(table):
        for c, cell in enumerate(row):
            x, y = left + c * width, top + r * height
            page.insert_text((x + 3, y + 14), cell, fontsize=9, fontname="helv")
    for r in range(len(table) + 1):
        page.draw_line((left, top + r * height), (left + 495, top + r * height))
    for c in range(len(header) + 1):
        page.draw_line((left + c * width, top), (left + c * width, bottom))
    data: bytes = doc.tobytes()
    doc.close()
    return data
