"""Hostile uploads (backtracking bait, zip bombs, entity bombs, parser sinks) and functions
that misbehave inside an extraction process (importable by a spawned child)."""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from pathlib import Path

FORMATS = Path(__file__).parent.parent / "data" / "formats"
ZIP_SAMPLES = {
    "docx": "sample.docx",
    "epub": "sample.epub",
    "cbz": "sample.cbz",
    "xps": "sample.xps",
    "xlsx": "sample.xlsx",
    "pptx": "sample.pptx",
}


def backtracking_bait(repeats: int = 40) -> bytes:
    """Empty HTML comments and no HTML after them (~300 bytes at 40): every split of the run
    between `<!--` and `-->` is a way for a nested quantifier to fail again."""
    return b"<!---->" * repeats + b"\nnot html after all\n"


def _rezip(sample: str, replace: dict[str, bytes], add: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(FORMATS / sample) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            data = replace.get(info.filename, source.read(info.filename))
            method = zipfile.ZIP_STORED if info.filename == "mimetype" else zipfile.ZIP_DEFLATED
            target.writestr(info.filename, data, compress_type=method)
        for name, data in add.items():
            target.writestr(name, data)
    return out.getvalue()


def zip_bomb(kind: str, megabytes: int = 8) -> bytes:
    """A valid sample of `kind` (docx, epub, cbz, xps) with one more member of zeros that
    deflates about 1000 to 1."""
    extra = "pages/zeros.jpg" if kind == "cbz" else "zeros.xml"
    return _rezip(ZIP_SAMPLES[kind], {}, {extra: bytes(megabytes << 20)})


def crowded_zip(kind: str, entries: int) -> bytes:
    """A valid sample of `kind` with `entries` more tiny members."""
    suffix = ".jpg" if kind == "cbz" else ".xml"
    return _rezip(ZIP_SAMPLES[kind], {}, {f"filler/{n}{suffix}": b"x" for n in range(entries)})


_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def _document_xml(body: str, doctype: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{doctype}'
        f"<w:document {_W}><w:body>{body}</w:body></w:document>"
    ).encode()


def many_paragraphs_docx(paragraphs: int = 100_000) -> bytes:
    """A DOCX of `paragraphs` short paragraphs (~250 KB for 100k): slow and big to parse."""
    body = "".join(f"<w:p><w:r><w:t>p{n}</w:t></w:r></w:p>" for n in range(paragraphs))
    return _rezip("sample.docx", {"word/document.xml": _document_xml(body)}, {})


def _laughs(levels: int) -> str:
    lines = ['<!ENTITY lol0 "lol">']
    lines += [f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, levels)]
    return "".join(lines)


def billion_laughs_docx(levels: int = 10) -> bytes:
    """A DOCX whose text is an entity that expands 10**(levels-1) times "lol"."""
    doctype = f"<!DOCTYPE w:document [{_laughs(levels)}]>"
    body = f"<w:p><w:r><w:t>start &lol{levels - 1}; end</w:t></w:r></w:p>"
    return _rezip("sample.docx", {"word/document.xml": _document_xml(body, doctype)}, {})


def billion_laughs_html(levels: int = 10) -> bytes:
    """HTML with the same entity bomb in an internal DTD subset."""
    return (
        f"<!DOCTYPE html [{_laughs(levels)}]><html><body><p>start &lol{levels - 1}; end</p>"
        "</body></html>"
    ).encode()


def wide_csv(megabytes: int) -> bytes:
    """One CSV row of two-letter fields: each parsed field is an object of its own."""
    return b"ab," * (megabytes * 2**20 // 3) + b"ab\n"


def sleep_for(seconds: float) -> str:
    """Passes PARSE_TIMEOUT."""
    time.sleep(seconds)
    return "woke"


def allocate(megabytes: int) -> int:
    """Passes PARSE_MAX_MEMORY."""
    return len(bytearray(megabytes << 20))


def die(signal_number: int) -> None:
    """The process dies as a crashing (SIGSEGV) or OOM-killed (SIGKILL) parser would."""
    os.kill(os.getpid(), signal.Signals(signal_number))


def process_id() -> int:
    """The id of the process that runs it."""
    return os.getpid()
