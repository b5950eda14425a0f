"""Regenerates the sample documents in this folder: `python tests/data/formats/make_samples.py`.

Each sample holds a few paragraphs of LaTeX package documentation (the afterpage and alltt
manuals, LPPL) and one distinctive phrase (`PHRASES`) that `tests/test_parsing.py` looks for in
a known unit. The PDF, the scan and the CBZ pages are made with PyMuPDF, the DOCX with
python-docx; EPUB, XPS, FB2 and MOBI are written here from their specifications (PyMuPDF has
no writer for them) and checked by opening them with PyMuPDF. Output is deterministic except
for the encrypted PDF (its key is random).
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import docx
import pymupdf as _pymupdf

HERE = Path(__file__).parent

PHRASES = {
    "pdf": "quartz meadow",
    "epub": "cobalt harbour",
    "xps": "saffron lantern",
    "mobi": "juniper tide",
    "fb2": "obsidian orchard",
    "docx": "velvet compass",
    "html": "amber glacier",
    "md": "silver thistle",
    "txt": "copper willow",
    "csv": "marble falcon",
}

AFTERPAGE = [
    "This package implements a command, \\afterpage, that causes the commands specified in "
    "its argument to be expanded after the current page is output.",
    "Sometimes LaTeX's float positioning mechanism gets overloaded, and all floating figures "
    "and tables drift to the end of the document. One may flush out all the unprocessed "
    "floats by issuing a \\clearpage command, but this has the effect of making the current "
    "page end prematurely. Now you can issue \\afterpage{\\clearpage} and the current page "
    "will be filled up with text as usual, but then a \\clearpage command will flush out all "
    "the floats before the next text page begins.",
    "An earlier mechanism to help with float placement was the optional argument [H] "
    "(meaning HERE!) which was originally added to the standard floating environments by "
    "here.sty, and is now provided by float.sty. However some [H] users have commented that "
    "they did not really mean 'Here!' They actually wanted 'Somewhere close'.",
]
ALLTT = [
    "This package defines the alltt environment, which is like the verbatim environment "
    "except that \\, { and } have their usual meanings. Thus, other commands and "
    "environments can appear within an alltt environment.",
    "Insert text from a file foo.tex by typing \\input{foo}. Beware that each return starts "
    "a new line, so if foo.tex ends with a return you can wind up with an extra blank line "
    "if you're not careful.",
    "Insert a math formula. Note that $ just produces a dollar sign, so you'll have to type "
    "\\(...\\) or \\[...\\]. Also, ^ and _ just produce their characters; use \\sp or \\sb "
    "for super- and subscripts.",
]


def marker(kind: str) -> str:
    """The sentence that carries a sample's distinctive phrase."""
    return f"The sample phrase of this {kind} file is {PHRASES[kind]}."


# PyMuPDF's constructors carry no type hints.
pymupdf: Any = _pymupdf
_Document: Any = pymupdf.open


def pdf_pages() -> list[str]:
    """Three pages: afterpage, then alltt with the marker, then the rest of afterpage."""
    return [
        "The afterpage package\n\n" + "\n\n".join(AFTERPAGE[:2]),
        "The alltt environment\n\n" + marker("pdf") + "\n\n" + "\n\n".join(ALLTT),
        "Float placement\n\n" + AFTERPAGE[2],
    ]


def make_pdf(pages: list[str]) -> bytes:
    doc = _Document()
    for text in pages:
        page = doc.new_page(width=595, height=842)
        page.insert_textbox(pymupdf.Rect(56, 56, 539, 786), text, fontsize=11, fontname="helv")
    doc.set_metadata({"title": "afterpage and alltt", "creationDate": "", "modDate": ""})
    data: bytes = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def make_scan(pdf: bytes) -> bytes:
    """A PDF whose only page is a picture of text (as a scanner makes), no text layer."""
    src = _Document(stream=pdf, filetype="pdf")
    png = src[0].get_pixmap(dpi=60, colorspace=pymupdf.csGRAY).tobytes("png")
    doc = _Document()
    doc.new_page(width=595, height=842).insert_image(pymupdf.Rect(0, 0, 595, 842), stream=png)
    doc.set_metadata({"creationDate": "", "modDate": ""})
    data: bytes = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    return data


def make_encrypted(pdf: bytes) -> bytes:
    doc = _Document(stream=pdf, filetype="pdf")
    out = io.BytesIO()
    doc.save(out, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    return out.getvalue()


def make_zero_pages() -> bytes:
    """A well-formed PDF whose page tree is empty (PyMuPDF refuses to write one)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_cbz(pdf: bytes) -> bytes:
    """A comic book archive: the PDF's first two pages as small PNG images, no text."""
    src = _Document(stream=pdf, filetype="pdf")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for number in range(2):
            png = src[number].get_pixmap(dpi=40, colorspace=pymupdf.csGRAY).tobytes("png")
            zf.writestr(_entry(f"page{number + 1:03}.png"), png)
    return out.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    # A fixed timestamp keeps the archives byte-for-byte reproducible.
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _xhtml(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{escape(p)}</p>\n" for p in paragraphs)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">\n'
        f"<head><title>{escape(title)}</title></head>\n"
        f"<body>\n<h1>{escape(title)}</h1>\n{body}</body>\n</html>\n"
    )


def make_epub() -> bytes:
    """EPUB 3 (OCF container, package document, nav): two chapters, the marker in the second."""
    chapters = [
        ("The afterpage package", AFTERPAGE),
        ("The alltt environment", [marker("epub"), *ALLTT]),
    ]
    opf = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">\n'
        '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
        '<dc:identifier id="id">urn:uuid:2b7d1f0e-5c1a-4f55-9d8e-6a0b7c2e1f01</dc:identifier>\n'
        "<dc:title>afterpage and alltt</dc:title><dc:language>en</dc:language>\n"
        '<meta property="dcterms:modified">2026-01-01T00:00:00Z</meta>\n</metadata>\n'
        "<manifest>\n"
        '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>\n'
        '<item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/>\n'
        '<item id="c2" href="c2.xhtml" media-type="application/xhtml+xml"/>\n'
        '</manifest>\n<spine><itemref idref="c1"/><itemref idref="c2"/></spine>\n</package>\n'
    )
    nav = (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">\n'
        '<head><title>Contents</title></head><body><nav epub:type="toc"><ol>\n'
        '<li><a href="c1.xhtml">The afterpage package</a></li>\n'
        '<li><a href="c2.xhtml">The alltt environment</a></li>\n'
        "</ol></nav></body></html>\n"
    )
    container = (
        '<?xml version="1.0"?>\n'
        '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">\n'
        '<rootfiles><rootfile full-path="OEBPS/content.opf" '
        'media-type="application/oebps-package+xml"/></rootfiles>\n</container>\n'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        mimetype = _entry("mimetype")
        mimetype.compress_type = zipfile.ZIP_STORED  # OCF: first, uncompressed
        zf.writestr(mimetype, "application/epub+zip")
        zf.writestr(_entry("META-INF/container.xml"), container)
        zf.writestr(_entry("OEBPS/content.opf"), opf)
        zf.writestr(_entry("OEBPS/nav.xhtml"), nav)
        for number, (title, paragraphs) in enumerate(chapters, start=1):
            zf.writestr(_entry(f"OEBPS/c{number}.xhtml"), _xhtml(title, paragraphs))
    return out.getvalue()


def make_xps() -> bytes:
    """OpenXPS/XPS package: two fixed pages of Glyphs runs in an embedded font (Nimbus Sans)."""
    ns = "http://schemas.microsoft.com/xps/2005/06"
    pages = [
        ["The afterpage package", *_lines(" ".join(AFTERPAGE[:2]), 80)],
        ["The alltt environment", *_lines(marker("xps") + " " + " ".join(ALLTT), 80)],
    ]
    content_types = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">\n'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>\n'
        '<Default Extension="fdseq" '
        'ContentType="application/vnd.ms-package.xps-fixeddocumentsequence+xml"/>\n'
        '<Default Extension="fdoc" '
        'ContentType="application/vnd.ms-package.xps-fixeddocument+xml"/>\n'
        '<Default Extension="fpage" ContentType="application/vnd.ms-package.xps-fixedpage+xml"/>\n'
        '<Default Extension="cff" ContentType="application/vnd.ms-opentype"/>\n'
        "</Types>\n"
    )
    rels = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">\n'
        '<Relationship Id="R1" Target="/FixedDocumentSequence.fdseq" '
        'Type="http://schemas.microsoft.com/xps/2005/06/fixedrepresentation"/>\n'
        "</Relationships>\n"
    )
    fdseq = (
        f'<FixedDocumentSequence xmlns="{ns}">'
        '<DocumentReference Source="/Documents/1/FixedDocument.fdoc"/></FixedDocumentSequence>\n'
    )
    fdoc = (
        f'<FixedDocument xmlns="{ns}">'
        + "".join(
            f'<PageContent Source="/Documents/1/Pages/{n}.fpage"/>'
            for n in range(1, len(pages) + 1)
        )
        + "</FixedDocument>\n"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(_entry("[Content_Types].xml"), content_types)
        zf.writestr(_entry("_rels/.rels"), rels)
        zf.writestr(_entry("FixedDocumentSequence.fdseq"), fdseq)
        zf.writestr(_entry("Documents/1/FixedDocument.fdoc"), fdoc)
        zf.writestr(_entry("Resources/helv.cff"), pymupdf.Font("helv").buffer)
        for number, lines in enumerate(pages, start=1):
            glyphs = "".join(
                '<Glyphs Fill="#FF000000" FontUri="/Resources/helv.cff" '
                f'FontRenderingEmSize="12" OriginX="48" OriginY="{60 + 16 * row}" '
                f'UnicodeString="{escape(line, {chr(34): "&quot;"})}"/>\n'
                for row, line in enumerate(lines)
            )
            page = (
                f'<FixedPage xmlns="{ns}" Width="816" Height="1056" xml:lang="en-US">\n'
                f"{glyphs}</FixedPage>\n"
            )
            zf.writestr(_entry(f"Documents/1/Pages/{number}.fpage"), page)
    return out.getvalue()


def _lines(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _fb2_section(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return f"<section><title><p>{escape(title)}</p></title>{body}</section>\n"


def make_fb2() -> bytes:
    """FictionBook 2.0 XML: two sections, the marker in the second."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<FictionBook xmlns="http://www.gribuser.ru/xml/fictionbook/2.0">\n'
        "<description><title-info><genre>computers</genre>"
        "<author><first-name>David</first-name><last-name>Carlisle</last-name></author>"
        "<book-title>afterpage and alltt</book-title><lang>en</lang></title-info>"
        "</description>\n<body>\n"
        + _fb2_section("The afterpage package", AFTERPAGE)
        + _fb2_section("The alltt environment", [marker("fb2"), *ALLTT])
        + "</body>\n</FictionBook>\n"
    ).encode()


def make_mobi() -> bytes:
    """Mobipocket: a Palm database (type BOOK, creator MOBI) holding uncompressed UTF-8 HTML.

    Layout after the MobileRead wiki's MOBI page: PDB header, record list, record 0 (PalmDOC
    header, then the MOBI header with encoding 65001 and the full name), text records of at
    most 4096 bytes.
    """
    html = (
        "<html><head><title>afterpage and alltt</title></head><body>"
        "<h1>The afterpage package</h1>"
        + "".join(f"<p>{escape(p)}</p>" for p in AFTERPAGE)
        + "<mbp:pagebreak/><h1>The alltt environment</h1>"
        + "".join(f"<p>{escape(p)}</p>" for p in [marker("mobi"), *ALLTT])
        + "</body></html>"
    ).encode()
    texts = [html[i : i + 4096] for i in range(0, len(html), 4096)]
    title = b"afterpage and alltt"
    mobi_header_length = 232
    mobi = bytearray(mobi_header_length)
    mobi[0:4] = b"MOBI"
    struct.pack_into(">IIIII", mobi, 4, mobi_header_length, 2, 65001, 0x5EED, 6)
    struct.pack_into(">II", mobi, 0x50 - 16, len(texts) + 1, 16 + mobi_header_length)
    struct.pack_into(">I", mobi, 0x54 - 16, len(title))
    struct.pack_into(">I", mobi, 0x58 - 16, 9)  # language: English
    for offset in range(0x28 - 16, 0x50 - 16, 4):  # orth/infl/names/... indexes: none
        struct.pack_into(">I", mobi, offset, 0xFFFFFFFF)
    struct.pack_into(">I", mobi, 0x68 - 16, 6)  # minimum reader version
    struct.pack_into(">I", mobi, 0x6C - 16, 0xFFFFFFFF)  # first image record: none
    palmdoc = struct.pack(">HHIHHHH", 1, 0, len(html), len(texts), 4096, 0, 0)
    record0 = palmdoc + bytes(mobi) + title + bytes(4 - len(title) % 4 + 4)
    records = [record0, *texts, b"\xe9\x8e\r\n"]  # the last one: end-of-file marker
    header_length = 78 + 8 * len(records) + 2
    name = b"afterpage_and_alltt".ljust(32, b"\0")
    pdb = bytearray(name)
    pdb += struct.pack(">HHIIIIII", 0, 0, 0x7B000000, 0x7B000000, 0, 0, 0, 0)
    pdb += b"BOOKMOBI" + struct.pack(">IIH", 2 * len(records) - 1, 0, len(records))
    offset = header_length
    for number, record in enumerate(records):
        pdb += struct.pack(">II", offset, 2 * number)
        offset += len(record)
    pdb += b"\0\0"
    return bytes(pdb) + b"".join(records)


def make_docx() -> bytes:
    """Word document: two Heading 1 sections, the marker in the second, and a small table."""
    document = docx.Document()
    document.core_properties.title = "afterpage and alltt"
    document.add_heading("The afterpage package", level=1)
    for paragraph in AFTERPAGE:
        document.add_paragraph(paragraph)
    document.add_heading("The alltt environment", level=1)
    document.add_paragraph(marker("docx"))
    for paragraph in ALLTT:
        document.add_paragraph(paragraph)
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(
        table.rows, [("Command", "Meaning"), ("\\sp", "superscript")], strict=True
    ):
        for cell, text in zip(row.cells, cells, strict=True):
            cell.text = text
    out = io.BytesIO()
    document.save(out)
    return _rezip(out.getvalue())


def _rezip(data: bytes) -> bytes:
    """The same archive with fixed timestamps, so regenerating changes no byte."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(_entry(info.filename), src.read(info))
    return out.getvalue()


def make_html() -> bytes:
    """An HTML page: navigation and a script (not text), two h2 sections, marker in the second."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>afterpage and alltt</title>\n<style>p { margin: 0 }</style>\n"
        "<script>console.log('not document text');</script></head>\n<body>\n"
        "<h1>LaTeX packages</h1>\n<h2>The afterpage package</h2>\n"
        + "".join(f"<p>{escape(p)}</p>\n" for p in AFTERPAGE)
        + "<h2>The alltt environment</h2>\n"
        + f"<p>{escape(marker('html'))} It has <b>bold</b> and <i>inline</i> words.</p>\n"
        + "<ul>"
        + "".join(f"<li>{escape(p)}</li>" for p in ALLTT)
        + "</ul>\n"
        + "</body></html>\n"
    ).encode()


def make_markdown() -> bytes:
    """Markdown: a title, two sections, a fenced block with a '#' line that is not a heading."""
    return (
        "# LaTeX packages\n\n## The afterpage package\n\n"
        + "\n\n".join(AFTERPAGE)
        + "\n\n```latex\n# not a heading: a line inside a code block\n"
        + "\\afterpage{\\clearpage}\n```\n"
        + "\n## The alltt environment\n\n"
        + marker("md")
        + "\n\n"
        + "\n\n".join(f"- {p}" for p in ALLTT)
        + "\n"
    ).encode()


def make_text() -> bytes:
    """Plain text in Windows-1252 (not UTF-8), three blocks of paragraphs, marker in the last."""
    paragraphs = [*AFTERPAGE, *ALLTT] * 4 + [
        "\u201cCaf\u00e9 society\u201d, they said: " + marker("txt"),
        *AFTERPAGE,
    ]
    return "\n\n".join(paragraphs).encode("cp1252") + b"\n"


def make_csv() -> bytes:
    """CSV of 120 rows (three blocks of 50), a header, quoted commas; the marker in row 75."""
    rng = random.Random(7)
    words = " ".join(AFTERPAGE + ALLTT).replace('"', "").split()
    lines = ["id,package,note,pages"]
    for row in range(1, 121):
        note = marker("csv") if row == 75 else " ".join(rng.sample(words, 6))
        package = "afterpage" if row % 2 else "alltt"
        lines.append(f'{row},{package},"{note}, row {row}",{rng.randint(1, 40)}')
    return ("\n".join(lines) + "\n").encode()


def make_xlsx() -> bytes:
    """A workbook of two sheets; the phrase is in the second block of rows of the first."""
    import datetime

    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Packages"
    sheet.append(["id", "package", "note"])
    for n in range(1, 71):
        note = "The sample phrase of this xlsx file is coral meridian." if n == 60 else f"row {n}"
        sheet.append([n, "afterpage" if n % 2 else "alltt", note])
    book.create_sheet("Notes").append(["remark"])
    book.properties.created = book.properties.modified = datetime.datetime(2026, 1, 1)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def make_pptx() -> bytes:
    """A deck of two slides; the phrase is on the second one."""
    import pptx

    deck = pptx.Presentation()
    for title, body in [
        ("The afterpage package", "It expands commands after the current page."),
        ("The alltt environment", "The sample phrase of this pptx file is indigo quarry."),
    ]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        assert slide.shapes.title is not None
        slide.shapes.title.text = title
        slide.placeholders[1].text_frame.text = body
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def main() -> None:
    pdf = make_pdf(pdf_pages())
    docx_bytes = make_docx()
    samples = {
        "sample.pdf": pdf,
        "sample.epub": make_epub(),
        "sample.xps": make_xps(),
        "sample.mobi": make_mobi(),
        "sample.fb2": make_fb2(),
        "sample.cbz": make_cbz(pdf),
        "sample.docx": docx_bytes,
        "sample.html": make_html(),
        "sample.md": make_markdown(),
        "sample.txt": make_text(),
        "sample.csv": make_csv(),
        "sample.xlsx": make_xlsx(),
        "sample.pptx": make_pptx(),
        "bad-encrypted.pdf": make_encrypted(pdf),
        "bad-truncated.pdf": pdf[: len(pdf) * 6 // 10],
        "bad-empty.pdf": b"",
        "bad-zero-pages.pdf": make_zero_pages(),
        "bad-scan.pdf": make_scan(pdf),
        "bad-pdf-named.txt": pdf,
        "bad-random.pdf": random.Random(11).randbytes(4096),
        "bad-broken.docx": docx_bytes[: len(docx_bytes) // 2],
    }
    for name, data in samples.items():
        (HERE / name).write_bytes(data)
        print(f"{name:24} {len(data):>8} bytes")


if __name__ == "__main__":
    main()
