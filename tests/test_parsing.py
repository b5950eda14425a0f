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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from rag_gql.errors import InvalidInput
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
    ROWS_PER_UNIT,
    SECTION_CHARS,
    TEXT,
    XPS,
    Inspection,
    Unit,
    extract_units,
    inspect_file,
    no_text_message,
    parse_document,
)

SAMPLES = Path(__file__).parent / "data" / "formats"


def sample(name: str) -> Path:
    return SAMPLES / name


def units_of(path: Path, filename: str | None = None) -> tuple[Inspection, list[str]]:
    inspection = inspect_file(path, filename or path.name, max_pages=100)
    return inspection, extract_units(path, inspection.media_type, 0, inspection.unit_count)


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
    assert extract_units(sample(name), media_type, at, at + 1) == [texts[at]]
    assert extract_units(sample(name), media_type, count, count) == []


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


def test_csv_units_repeat_the_header() -> None:
    _, texts = units_of(sample("sample.csv"))
    assert all(text.startswith("id,package,note,pages\n") for text in texts)
    assert [len(text.splitlines()) - 1 for text in texts] == [ROWS_PER_UNIT, ROWS_PER_UNIT, 20]
    # Row 75 is the 25th data row of the second block, its quoted comma kept.
    assert texts[1].splitlines()[25].startswith('75,afterpage,"The sample phrase')
    assert "marble falcon., row 75" in texts[1]


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
    assert texts[1].endswith("Command | Meaning\n\n\\sp | superscript")


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


def test_image_only_documents_read_as_blank() -> None:
    inspection, texts = units_of(sample("sample.cbz"))
    assert inspection == Inspection(media_type=CBZ, unit=Unit.PAGE, unit_count=2)
    assert texts == ["", ""]
    assert "only images" in no_text_message("comic.cbz", CBZ)

    inspection, texts = units_of(sample("bad-scan.pdf"))
    assert inspection.unit_count == 1 and not texts[0].strip()
    assert no_text_message("bad-scan.pdf", PDF) == (
        "'bad-scan.pdf' has no text layer (a scanned PDF?); OCR is not supported yet"
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
        ("bad-random.pdf", ("not supported", "supported: PDF, EPUB, XPS, MOBI, FB2, CBZ, DOCX")),
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
    assert "quartz meadow" in results[0][0] and "marble falcon" in results[1][0]


def test_parse_document_stays_pdf_only() -> None:
    parsed = parse_document(sample("sample.pdf").read_bytes(), "a.pdf")
    assert parsed.page_count == 3 and "quartz meadow" in parsed.pages[1]
    with pytest.raises(InvalidInput, match="not a PDF"):
        parse_document(sample("sample.md").read_bytes(), "a.md")
    with pytest.raises(InvalidInput, match="no text layer"):
        parse_document(sample("bad-scan.pdf").read_bytes(), "scan.pdf")
