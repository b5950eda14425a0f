"""Parsing: types told from content, units per format, limits, and bad files, on real samples.

The samples in `tests/data/formats` come from `make_samples.py` there; each holds a phrase
that must come out in a known unit.
"""

from __future__ import annotations

import io
import multiprocessing
import re
import shutil
import struct
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import docx
import openpyxl
import pptx
import pptx.util
import pymupdf
import pytest

from rag_gql.config import Settings
from rag_gql.errors import InvalidInput
from rag_gql.services.chunking import chunk_pages, normalize_page
from rag_gql.services.extraction import ExtractionLimit, ExtractionPool
from rag_gql.services.ocr import OcrMode, OcrOptions, availability, render_dpi
from rag_gql.services.parsing import (
    CBZ,
    CSV,
    DOCX,
    EPUB,
    FB2,
    HTML,
    MARKDOWN,
    MOBI,
    PDF,
    PPTX,
    ROWS_PER_UNIT,
    SECTION_CHARS,
    TEXT,
    XLSX,
    XPS,
    Extracted,
    Inspection,
    Unit,
    extract_units,
    inspect_file,
    may_hold_ruled_table,
    no_text_message,
)
from rag_gql.services.pgtext import repair_surrogates
from rag_gql.services.tables import markdown_table
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.pdfs import make_pdf, make_scanned_pdf, make_table_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox

SAMPLES = Path(__file__).parent / "data" / "formats"
pymupdf_open: Any = pymupdf.open  # no type hints


def sample(name: str) -> Path:
    return SAMPLES / name


def units_of(path: Path, filename: str | None = None) -> tuple[Inspection, list[str]]:
    inspection = inspect_file(path, filename or path.name, max_pages=100)
    return inspection, extract_units(path, inspection.media_type, 0, inspection.unit_count).texts


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "media_type", "unit", "count", "phrase", "at"),
    [
        ("sample.pdf", PDF, Unit.PAGE, 3, "quartz meadow", 1),
        ("sample.epub", EPUB, Unit.PAGE, 2, "cobalt harbour", 1),
        ("sample.xps", XPS, Unit.PAGE, 2, "saffron lantern", 1),
        ("sample.mobi", MOBI, Unit.PAGE, 1, "juniper tide", 0),
        ("sample.fb2", FB2, Unit.PAGE, 1, "obsidian orchard", 0),
        ("sample.docx", DOCX, Unit.SECTION, 2, "velvet compass", 1),
        ("sample.html", HTML, Unit.SECTION, 2, "amber glacier", 1),
        ("sample.md", MARKDOWN, Unit.SECTION, 2, "silver thistle", 1),
        ("sample.txt", TEXT, Unit.SECTION, 2, "copper willow", 1),
        ("sample.csv", CSV, Unit.ROWS, 3, "marble falcon", 1),
        ("sample.xlsx", XLSX, Unit.ROWS, 3, "coral meridian", 1),
        ("sample.pptx", PPTX, Unit.PAGE, 2, "indigo quarry", 1),
        # A PDF wearing a .txt name is still a PDF.
        ("bad-pdf-named.txt", PDF, Unit.PAGE, 3, "quartz meadow", 1),
    ],
)
def test_each_format_gives_its_units(
    name: str, media_type: str, unit: Unit, count: int, phrase: str, at: int
) -> None:
    inspection, texts = units_of(sample(name))
    assert inspection == Inspection(media_type=media_type, unit=unit, unit_count=count)
    assert len(texts) == count
    assert [number for number, text in enumerate(texts) if phrase in text] == [at]
    # A batch of one unit is the same text as that unit read with the others.
    assert extract_units(sample(name), media_type, at, at + 1).texts == [texts[at]]
    assert extract_units(sample(name), media_type, count, count).texts == []


def test_binary_formats_ignore_the_name(tmp_path: Path) -> None:
    for source, media_type in [("sample.docx", DOCX), ("sample.epub", EPUB), ("sample.xps", XPS)]:
        renamed = write(tmp_path, "report.pdf", sample(source).read_bytes())
        assert inspect_file(renamed, "report.pdf", max_pages=10).media_type == media_type


def test_text_formats_are_sniffed_and_the_extension_breaks_ties(tmp_path: Path) -> None:
    csv_bytes = sample("sample.csv").read_bytes()
    markdown = sample("sample.md").read_bytes()
    html = sample("sample.html").read_bytes()
    cases = [
        ("data", csv_bytes, CSV),  # no extension: the columns tell
        ("data.txt", csv_bytes, TEXT),  # the user said text
        ("notes", markdown, MARKDOWN),  # headings and a fence tell
        ("notes.txt", markdown, TEXT),
        ("page.txt", html, HTML),  # a doctype is not a tie
        ("plain.pdf", b"plain text wearing a .pdf name\n", TEXT),
    ]
    for filename, data, media_type in cases:
        path = write(tmp_path, "upload", data)
        assert inspect_file(path, filename, max_pages=10).media_type == media_type, filename


def test_csv_units_are_markdown_tables_with_the_header_on_each() -> None:
    _, texts = units_of(sample("sample.csv"))
    header = "| id | package | note | pages |\n| --- | --- | --- | --- |\n"
    assert all(text.startswith(header) for text in texts)
    assert [len(text.splitlines()) - 2 for text in texts] == [ROWS_PER_UNIT, ROWS_PER_UNIT, 20]
    # Row 75 is the 25th data row of the second block, its quoted comma kept in its cell.
    assert texts[1].splitlines()[26].startswith("| 75 | afterpage | The sample phrase")
    assert "marble falcon., row 75 |" in texts[1]


def test_html_keeps_the_text_and_drops_the_rest() -> None:
    _, texts = units_of(sample("sample.html"))
    joined = "\n".join(texts)
    assert "console.log" not in joined and "margin" not in joined
    assert "It has bold and inline words." in texts[1]
    assert texts[1].startswith("The alltt environment\n\n")


def test_markdown_sections_split_at_headings_only() -> None:
    _, texts = units_of(sample("sample.md"))
    assert texts[0].startswith("# LaTeX packages")
    assert "# not a heading: a line inside a code block" in texts[0]
    assert texts[1].startswith("## The alltt environment")


def test_docx_sections_include_tables() -> None:
    _, texts = units_of(sample("sample.docx"))
    assert texts[0].startswith("The afterpage package")
    assert texts[1].endswith("| Command | Meaning |\n| --- | --- |\n| \\sp | superscript |")


def test_text_encoding_is_detected() -> None:
    _, texts = units_of(sample("sample.txt"))
    assert "\u201cCaf\u00e9 society\u201d, they said" in texts[1]


def test_long_text_is_cut_into_bounded_sections(tmp_path: Path) -> None:
    words = sample("sample.txt").read_bytes().decode("cp1252").split()
    paragraphs = [" ".join(words[i : i + 90]) for i in range(0, len(words), 90)]
    one_line = " ".join(words) * 3  # a paragraph far longer than a section
    path = write(tmp_path, "long.txt", ("\n\n".join(paragraphs) + "\n\n" + one_line).encode())
    inspection, texts = units_of(path)
    assert inspection.unit_count == len(texts) >= 4
    assert all(0 < len(text) <= SECTION_CHARS for text in texts)
    assert " ".join(" ".join(texts).split()) == " ".join([*paragraphs, one_line])


def test_image_only_documents_read_as_blank_with_ocr_off() -> None:
    off = OcrOptions(mode=OcrMode.OFF)
    inspection = inspect_file(sample("sample.cbz"), "comic.cbz", max_pages=10)
    assert inspection == Inspection(media_type=CBZ, unit=Unit.PAGE, unit_count=2)
    assert extract_units(sample("sample.cbz"), CBZ, 0, 2, ocr=off) == Extracted(["", ""], 0)
    assert "only images" in no_text_message("comic.cbz", CBZ, ocr=OcrMode.OFF)

    extracted = extract_units(sample("bad-scan.pdf"), PDF, 0, 1, ocr=off)
    assert not extracted.texts[0].strip() and extracted.ocr_pages == 0
    assert no_text_message("bad-scan.pdf", PDF, ocr=OcrMode.OFF) == (
        "'bad-scan.pdf' has no text layer (a scanned PDF?); OCR is off (OCR=off)"
    )
    assert no_text_message("bad-scan.pdf", PDF) == (
        "'bad-scan.pdf' has no text layer, and OCR found no text in it (blank or pictures only?)"
    )


def test_blank_text_is_one_empty_unit(tmp_path: Path) -> None:
    inspection, texts = units_of(write(tmp_path, "blank.md", b" \n\n\t\n"))
    assert (inspection.unit_count, texts) == (1, [""])
    assert no_text_message("blank.md", MARKDOWN) == "'blank.md' contains no text"


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("bad-empty.pdf", ("is empty",)),
        ("bad-encrypted.pdf", ("encrypted", "without a password")),
        ("bad-truncated.pdf", ("not a readable PDF", "corrupt or truncated")),
        ("bad-zero-pages.pdf", ("has no pages",)),
        (
            "bad-random.pdf",
            ("not supported", "supported: PDF, EPUB, XPS, MOBI, FB2, CBZ, DOCX, XLSX, PPTX"),
        ),
        ("bad-broken.docx", ("damaged", "corrupt or truncated")),
    ],
)
def test_bad_samples_are_refused_clearly(name: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInput) as caught:
        inspect_file(sample(name), name, max_pages=100)
    message = str(caught.value)
    assert message.startswith(repr(name))
    for fragment in fragments:
        assert fragment in message


def _epub_with(member: str, content: str) -> bytes:
    out = io.BytesIO(sample("sample.epub").read_bytes())
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(member, content)
    return out.getvalue()


def _mobi_with_drm() -> bytes:
    data = bytearray(sample("sample.mobi").read_bytes())
    (record0,) = struct.unpack_from(">I", data, 78)
    struct.pack_into(">H", data, record0 + 12, 2)  # Mobipocket DRM
    return bytes(data)


def _zip_of(**members: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


aes = '<EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
font = '<EncryptionMethod Algorithm="http://www.idpf.org/2008/embedding"/>'


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("drm.epub", _epub_with("META-INF/encryption.xml", aes), "encrypted (DRM)"),
        ("drm.mobi", _mobi_with_drm(), "encrypted (DRM)"),
        ("photo.pdf", b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image, which is not supported"),
        ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "legacy"),
        ("code.zip", _zip_of(**{"a.py": b"print(1)"}), "a ZIP archive but not an EPUB"),
        ("nul.txt", b"text\x00with a NUL byte " * 8, "binary data"),
    ],
)
def test_other_bad_files_are_refused_clearly(
    tmp_path: Path, name: str, data: bytes, fragment: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^'{re.escape(name)}' .*{re.escape(fragment)}"):
        inspect_file(write(tmp_path, name, data), name, max_pages=100)


def test_epub_with_obfuscated_fonts_is_readable(tmp_path: Path) -> None:
    path = write(tmp_path, "fonts.epub", _epub_with("META-INF/encryption.xml", font))
    assert inspect_file(path, "fonts.epub", max_pages=10).media_type == EPUB


@pytest.mark.parametrize(
    ("name", "max_pages", "message"),
    [
        ("sample.pdf", 2, "'sample.pdf' has 3 pages; the limit is 2"),
        ("sample.md", 1, "'sample.md' has 2 sections; the limit is 1"),
        ("sample.csv", 2, "'sample.csv' has 3 blocks of rows (50 rows each); the limit is 2"),
    ],
)
def test_unit_limit_is_enforced(name: str, max_pages: int, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        inspect_file(sample(name), name, max_pages=max_pages)
    assert str(caught.value) == message
    assert inspect_file(sample(name), name, max_pages=max_pages + 1).unit_count == max_pages + 1


def test_extract_units_checks_its_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        extract_units(sample("sample.pdf"), PDF, 2, 4)
    with pytest.raises(ValueError, match="out of range"):
        extract_units(sample("sample.csv"), CSV, 2, 1)


def test_a_file_damaged_after_inspection_fails_extraction(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    shutil.copy(sample("sample.pdf"), path)
    inspection = inspect_file(path, "a.pdf", max_pages=10)
    path.write_bytes(sample("bad-truncated.pdf").read_bytes())
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        extract_units(path, inspection.media_type, 0, inspection.unit_count)


def test_extract_units_runs_in_a_process_pool() -> None:
    jobs = [("sample.pdf", PDF, 1, 3), ("sample.csv", CSV, 1, 2), ("sample.docx", DOCX, 1, 2)]
    # spawn: the worker gets nothing from this process but what is pickled.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        futures = [pool.submit(extract_units, sample(n), t, a, b) for n, t, a, b in jobs]
        results = [future.result(timeout=60) for future in futures]
    assert results == [extract_units(sample(n), t, a, b) for n, t, a, b in jobs]
    assert "quartz meadow" in results[0].texts[0] and "marble falcon" in results[1].texts[0]


def test_a_pdf_reads_through_inspection_and_extraction(tmp_path: Path) -> None:
    path = write(tmp_path, "a.pdf", make_pdf(["first page text", "second page text"]))
    inspection, texts = units_of(path)
    assert inspection.unit_count == 2 and "second page text" in texts[1]


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"%PDF-1.7\n garbage garbage", "not a readable PDF")],
)
def test_bad_pdfs_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        inspect_file(write(tmp_path, "x.pdf", data), "x.pdf", max_pages=10)


# --- OCR, tables, spreadsheets and slides -------------------------------------------------

SCAN_WORDS = "The heron stands motionless in the shallow estuary at dawn."
SEARCH = (
    "query($q: String!) { search(query: $q, k: 3, mode: KEYWORD) "
    "{ text page document { filename unit ocrPages } } }"
)
TABLE_HEADER = ["Pigment", "Supplier", "Litres"]
TABLE_ROWS = [[f"ochre{i}", f"vendor{i}", str(i * 3)] for i in range(60)]


def table_chunks_hold_their_header(hits: list[Json], cell: str, header: str) -> None:
    assert hits, f"{cell!r} not found"
    assert cell in hits[0]["text"] and header in hits[0]["text"], hits[0]


def test_an_image_only_pdf_is_read_by_ocr(tmp_path: Path) -> None:
    path = write(
        tmp_path, "scan.pdf", make_scanned_pdf([SCAN_WORDS, "", "Kingfishers nest in riverbanks."])
    )
    inspection = inspect_file(path, "scan.pdf", max_pages=10)
    extracted = extract_units(path, PDF, 0, inspection.unit_count)
    assert "heron stands motionless" in extracted.texts[0]
    assert "Kingfishers" in extracted.texts[2]
    assert extracted.ocr_pages == 3  # the blank page too: it is a picture (of nothing)

    off = extract_units(path, PDF, 0, 3, ocr=OcrOptions(mode=OcrMode.OFF))
    assert off == Extracted(["", "", ""], 0)
    # force reads a page with a text layer by OCR too.
    text_pdf = write(tmp_path, "text.pdf", make_pdf(["Plain text layer words here."]))
    forced = extract_units(text_pdf, PDF, 0, 1, ocr=OcrOptions(mode=OcrMode.FORCE))
    assert forced.ocr_pages == 1 and "text layer words" in forced.texts[0]
    assert extract_units(text_pdf, PDF, 0, 1).ocr_pages == 0


def test_a_blank_page_is_not_ocred(tmp_path: Path) -> None:
    path = write(tmp_path, "blank.pdf", make_pdf(["", "words"]))
    assert extract_units(path, PDF, 0, 2) == Extracted(["", "words\n"], 0)


def test_ocr_renders_a_huge_page_within_the_pixel_cap() -> None:
    options = OcrOptions(dpi=300, max_pixels=1_000_000)
    assert render_dpi(595, 842, OcrOptions()) == 300  # A4 at 300 dpi: 8.7 million pixels
    dpi = render_dpi(14400, 14400, options)  # the largest PDF page, 200 inches square
    assert (14400 * dpi / 72) ** 2 <= 1_000_000 and dpi >= 1


def test_without_tesseract_a_page_that_needs_ocr_fails_saying_what_to_install(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "scan.pdf", make_scanned_pdf([SCAN_WORDS]))
    nowhere = OcrOptions(tessdata=str(tmp_path / "no-tessdata"))
    assert not availability(nowhere).available
    with pytest.raises(InvalidInput) as caught:
        extract_units(path, PDF, 0, 1, ocr=nowhere)
    message = str(caught.value)
    assert "page 1 of the PDF file has no text layer and needs OCR" in message
    assert "apt-get install tesseract-ocr tesseract-ocr-eng" in message
    assert "TESSDATA_PREFIX" in message and "OCR=off" in message
    # A text PDF does not need Tesseract at all.
    text_pdf = write(tmp_path, "text.pdf", make_pdf(["words"]))
    assert extract_units(text_pdf, PDF, 0, 1, ocr=nowhere).texts == ["words\n"]


async def test_ocr_past_its_page_timeout_fails_the_call_and_the_pool_goes_on(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "scan.pdf", make_scanned_pdf([SCAN_WORDS]))
    pool = ExtractionPool(processes=1, timeout=60, max_memory=1 << 31)
    try:
        slow = OcrOptions(page_timeout=0.001)
        with pytest.raises(ExtractionLimit, match="OCR_PAGE_TIMEOUT"):
            await pool.run("'scan.pdf', units 1-1", extract_units, path, PDF, 0, 1, ocr=slow)
        extracted = await pool.run("'scan.pdf'", extract_units, path, PDF, 0, 1)
        assert "heron" in extracted.texts[0] and extracted.ocr_pages == 1
    finally:
        pool.close()


def test_pdf_tables_become_markdown_without_their_words_twice(tmp_path: Path) -> None:
    data = make_table_pdf("Stock of pigments, spring.", TABLE_HEADER, TABLE_ROWS[:5])
    (text,) = units_of(write(tmp_path, "t.pdf", data))[1]
    assert text.startswith("Stock of pigments, spring.\n")
    assert "| Pigment | Supplier | Litres |\n| --- | --- | --- |\n| ochre0 | vendor0 | 0 |" in text
    assert text.count("ochre3") == 1 and text.count("Supplier") == 1


_OPEN: Any = pymupdf.open


def test_the_table_finder_runs_only_where_a_ruled_table_can_be() -> None:
    """`may_hold_ruled_table` is a necessary condition of `find_tables` finding one (checked
    on every page of the LaTeX corpus, bench/README.md): the table's page passes; prose, and
    prose under horizontal rules only (no columns), do not, and neither finds a table."""
    table = _OPEN(stream=make_table_pdf("Pigments.", TABLE_HEADER, TABLE_ROWS[:5]))
    assert may_hold_ruled_table(table[0]) and table[0].find_tables(use_layout=False).tables
    ruled = _OPEN()
    page = ruled.new_page()
    page.insert_text((72, 100), "A heading over a rule, then prose under another rule.")
    for y in (104, 140, 180):
        page.draw_line((72, y), (520, y))
    plain = _OPEN(stream=make_pdf(["Only prose on this page."]))
    for other in (ruled[0], plain[0]):
        assert not may_hold_ruled_table(other)
        assert not other.find_tables(use_layout=False).tables


def test_surrogates_from_a_pdf_font_are_made_whole() -> None:
    assert repair_surrogates("x\ud83d\ude00y") == "x\U0001f600y"  # a pair: its character
    assert repair_surrogates("a\ud80c b") == "a\ufffd b"  # a lone half: U+FFFD
    assert repair_surrogates("plain") == "plain"


def test_a_long_table_is_chunked_by_rows_with_its_header() -> None:
    table = markdown_table([TABLE_HEADER, *TABLE_ROWS])
    page = f"Before the table.\n\n{table}\n\nAfter the table."
    chunks = chunk_pages([page], size=300, overlap=50)
    table_chunks = [c for c in chunks if "ochre" in c.text]
    assert len(table_chunks) > 3
    header = "| Pigment | Supplier | Litres |\n| --- | --- | --- |\n"
    assert all(c.text.startswith(header) and len(c.text) <= 300 for c in table_chunks)
    rows = [line for c in table_chunks for line in c.text.splitlines()[2:]]
    assert rows == table.splitlines()[2:], "every row once, in order, none cut"
    assert chunks[0].text == "Before the table." and chunks[-1].text == "After the table."
    normalized = normalize_page(page)
    for chunk in table_chunks[1:]:  # the range is the rows; the header comes first
        assert chunk.text.endswith(normalized[chunk.char_start : chunk.char_end])


def test_a_table_too_wide_for_a_chunk_is_cut_as_prose() -> None:
    wide = markdown_table([[f"h{i}" for i in range(2000)], [f"v{i}" for i in range(2000)]])
    chunks = chunk_pages([wide], size=400, overlap=60)
    assert chunks and all(len(c.text) <= 400 for c in chunks)
    assert "v1999" in chunks[-1].text


def test_docx_html_and_csv_tables_keep_cells_with_their_header(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_paragraph("Stock list")
    grid = document.add_table(rows=1 + len(TABLE_ROWS), cols=3)
    for r, row in enumerate([TABLE_HEADER, *TABLE_ROWS]):
        for c, value in enumerate(row):
            grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    html = (
        "<html><body><h1>Stock</h1><table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in TABLE_HEADER)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in TABLE_ROWS)
        + "</tbody></table><p>After.</p></body></html>"
    )
    csv_text = "\n".join(",".join(row) for row in [TABLE_HEADER, *TABLE_ROWS]) + "\n"
    for name, data in [
        ("t.docx", out.getvalue()),
        ("t.html", html.encode()),
        ("t.csv", csv_text.encode()),
    ]:
        _, texts = units_of(write(tmp_path, name, data))
        chunks = chunk_pages(texts, size=400, overlap=60)
        for cell in ("ochre0", "ochre31", "ochre59"):
            (chunk,) = [c for c in chunks if f"| {cell} |" in c.text]
            assert "| Pigment | Supplier | Litres |" in chunk.text, (name, chunk)


def make_xlsx(sheets: dict[str, Sequence[Sequence[object]]]) -> bytes:
    book = openpyxl.Workbook()
    book.remove(book.active)  # type: ignore[arg-type]  # a new workbook has one sheet
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def make_pptx() -> bytes:
    deck = pptx.Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    assert first.shapes.title is not None
    first.shapes.title.text = "Quarterly pigments"
    first.placeholders[1].text_frame.text = "Ochre sales rose in the north."
    notes = first.notes_slide.notes_text_frame
    assert notes is not None
    notes.text = "Mention the kiln repairs."
    second = deck.slides.add_slide(deck.slide_layouts[5])
    assert second.shapes.title is not None
    second.shapes.title.text = "Suppliers"
    shape = second.shapes.add_table(3, 2, *(pptx.util.Inches(1),) * 4)
    for r, row in enumerate(
        [["Pigment", "Supplier"], ["umber", "Siena works"], ["ochre", "Roussillon"]]
    ):
        for c, value in enumerate(row):
            shape.table.cell(r, c).text = value
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def test_xlsx_sheets_give_blocks_of_rows_with_their_header_and_name(tmp_path: Path) -> None:
    rows: list[list[object]] = [["Pigment", None, "Litres"]]
    rows += [[f"ochre{i}", None, i * 1.0] for i in range(70)]
    data = make_xlsx({"Spring stock": rows, "Empty": [], "Notes": [["Remark"], ["dry by noon"]]})
    inspection, texts = units_of(write(tmp_path, "stock.bin", data))
    assert inspection == Inspection(media_type=XLSX, unit=Unit.ROWS, unit_count=3)
    head = "## Spring stock\n\n| Pigment | Litres |\n| --- | --- |\n"
    assert texts[0].startswith(head) and texts[1].startswith(head)
    assert "| ochre69 | 69 |" in texts[1] and "ochre69" not in texts[0]
    assert texts[2] == "## Notes\n\n| Remark |\n| --- |\n| dry by noon |"
    chunks = chunk_pages(texts, size=300, overlap=50)
    (chunk,) = [c for c in chunks if "| ochre55 |" in c.text]
    assert chunk.text.startswith(head.rstrip("\n")) and chunk.page == 2


def test_pptx_slides_are_pages_with_title_body_tables_and_notes(tmp_path: Path) -> None:
    inspection, texts = units_of(write(tmp_path, "deck", make_pptx()))
    assert inspection == Inspection(media_type=PPTX, unit=Unit.PAGE, unit_count=2)
    assert texts[0] == (
        "# Quarterly pigments\n\nOchre sales rose in the north.\n\nNotes: Mention the kiln repairs."
    )
    assert texts[1] == (
        "# Suppliers\n\n| Pigment | Supplier |\n| --- | --- |\n| umber | Siena works |\n"
        "| ochre | Roussillon |"
    )


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("broken.xlsx", _zip_of(**{"xl/workbook.xml": b"<not xml"}), "not a readable XLSX"),
        ("broken.pptx", _zip_of(**{"ppt/presentation.xml": b"<x/>"}), "not a readable PPTX"),
    ],
)
def test_damaged_spreadsheets_and_slides_are_refused(
    tmp_path: Path, name: str, data: bytes, fragment: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^'{re.escape(name)}' .*{fragment}"):
        inspect_file(write(tmp_path, name, data), name, max_pages=10)


def test_a_sheet_declaring_a_huge_range_reads_only_its_cells(tmp_path: Path) -> None:
    data = make_xlsx({"S": [["Key", "Value"], ["a", 1]]})
    # The sheet claims every cell of the grid; read-only mode must not believe it.
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            body = source.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                body = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:XFD1048576"', body)
            target.writestr(item, body)
    _, texts = units_of(write(tmp_path, "huge.xlsx", out.getvalue()))
    assert texts == ["## S\n\n| Key | Value |\n| --- | --- |\n| a | 1 |"]


async def test_a_scan_a_table_a_sheet_and_a_deck_are_found_through_search(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    fields = "id status error ocrPages pageCount"
    uploads = [
        ("scan.pdf", make_scanned_pdf([SCAN_WORDS])),
        ("table.pdf", make_table_pdf("Stock of pigments.", TABLE_HEADER, TABLE_ROWS[:30])),
        ("stock.xlsx", make_xlsx({"Spring stock": [TABLE_HEADER, *TABLE_ROWS]})),
        ("deck.pptx", make_pptx()),
    ]
    documents = {}
    for name, data in uploads:
        response = await gql.upload(name, data, token=token, fields=fields)
        documents[name] = response.json()["data"]["uploadDocument"]
        assert documents[name]["status"] == "READY", documents[name]
    assert [documents[name]["ocrPages"] for name, _ in uploads] == [1, 0, 0, 0]

    hits = (await gql.data(SEARCH, {"q": "heron estuary"}, token=token))["search"]
    assert hits and hits[0]["document"] == {"filename": "scan.pdf", "unit": "PAGE", "ocrPages": 1}
    assert "motionless" in hits[0]["text"]

    hits = (await gql.data(SEARCH, {"q": "vendor27"}, token=token))["search"]
    assert hits[0]["document"]["filename"] == "table.pdf"
    table_chunks_hold_their_header(hits, "| ochre27 | vendor27 | 81 |", "| Pigment | Supplier |")

    hits = (await gql.data(SEARCH, {"q": "ochre58"}, token=token))["search"]
    assert hits[0]["document"]["filename"] == "stock.xlsx" and hits[0]["page"] == 2
    table_chunks_hold_their_header(hits, "ochre58", "## Spring stock\n\n| Pigment | Supplier |")

    hits = (await gql.data(SEARCH, {"q": "Roussillon"}, token=token))["search"]
    assert (hits[0]["document"]["filename"], hits[0]["page"]) == ("deck.pptx", 2)
    assert (
        "| ochre | Roussillon |" in hits[0]["text"] and "| Pigment | Supplier |" in hits[0]["text"]
    )


async def test_a_scan_fails_with_the_install_hint_when_tesseract_is_missing(
    inbox: Inbox, settings: Settings, tmp_path: Path
) -> None:
    missing = settings.model_copy(update={"tessdata_prefix": str(tmp_path / "nowhere")})
    async with serve_client(missing) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        response = await gql.upload(
            "scan.pdf", make_scanned_pdf([SCAN_WORDS]), token=token, fields="id status error"
        )
        document = response.json()["data"]["uploadDocument"]
    assert document["status"] == "FAILED"
    assert "needs OCR" in document["error"] and "tesseract-ocr-eng" in document["error"]


def _paths(extracted: Extracted) -> list[list[tuple[str, ...]]]:
    return [[heading.path for heading in unit] for unit in extracted.headings]


def test_a_pdf_outline_gives_the_heading_path_of_each_page(tmp_path: Path) -> None:
    doc: Any = pymupdf_open(stream=make_pdf(["Intro words.", "Usage\n\nOptions words.", "More."]))
    doc.set_toc([[1, "Intro", 1], [1, "Usage", 2], [2, "Options", 2]])
    path = write(tmp_path, "manual.pdf", doc.tobytes())
    extracted = extract_units(path, PDF, 0, 3)
    assert _paths(extracted) == [
        [("Intro",)],
        [("Intro",), ("Usage",), ("Usage", "Options")],
        [("Usage", "Options")],
    ]
    assert extracted.headings[1][2].marker == "Options"
    # Without an outline, no headings.
    assert (
        extract_units(write(tmp_path, "plain.pdf", make_pdf(["a", "b"])), PDF, 0, 2).headings == []
    )


def test_docx_html_and_markdown_sections_carry_their_heading_path(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_heading("Firing", level=1)
    document.add_paragraph("Heat slowly.")
    document.add_heading("Cones", level=2)
    document.add_paragraph("Cone six is mid-fire.")
    document.add_heading("Glazes", level=1)
    document.add_paragraph("Stir well.")
    out = io.BytesIO()
    document.save(out)
    html = (
        "<html><head><title>SELECT</title></head><body><h1>SELECT</h1><p>Intro.</p>"
        "<h2>The WHERE clause</h2><p>Filters rows.</p><h3>Subqueries</h3><p>Nested.</p>"
        "<h2>LIMIT</h2><p>Caps rows.</p></body></html>"
    )
    markdown = "# Guide\n\nIntro.\n\n## Install ##\n\nRun it.\n\nSetup\n-----\n\nDone.\n"
    cases = [
        (
            "guide.docx",
            out.getvalue(),
            [("Firing",), ("Firing", "Cones"), ("Glazes",)],
        ),
        (
            "select.html",
            html.encode(),
            [
                ("SELECT",),
                ("SELECT", "The WHERE clause"),
                ("SELECT", "The WHERE clause", "Subqueries"),
                ("SELECT", "LIMIT"),
            ],
        ),
        ("guide.md", markdown.encode(), [("Guide",), ("Guide", "Install"), ("Guide", "Setup")]),
    ]
    for name, data, expected in cases:
        path = write(tmp_path, name, data)
        inspection = inspect_file(path, name, max_pages=100)
        extracted = extract_units(path, inspection.media_type, 0, inspection.unit_count)
        got = [unit[0].path if unit else () for unit in extracted.headings]
        assert got == expected, (name, extracted.texts, got)


def test_sheets_and_slides_sit_under_their_name_and_title(tmp_path: Path) -> None:
    data = make_xlsx({"Spring stock": [["Pigment"], ["ochre"]], "Notes": [["Remark"], ["dry"]]})
    sheet = extract_units(write(tmp_path, "stock.xlsx", data), XLSX, 0, 2)
    assert _paths(sheet) == [[("Spring stock",)], [("Notes",)]]
    deck = extract_units(write(tmp_path, "deck.pptx", make_pptx()), PPTX, 0, 2)
    assert _paths(deck) == [[("Quarterly pigments",)], [("Suppliers",)]]
    csv_units = extract_units(sample("sample.csv"), CSV, 0, 3)
    assert csv_units.headings == []
