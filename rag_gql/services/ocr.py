"""OCR of pages without a text layer: PyMuPDF's built-in Tesseract, with Tesseract's language
data found on the machine (`TESSDATA_PREFIX`, else the installed `tesseract`'s folder).

PyMuPDF links Tesseract's library itself; what it needs from the system is the language data
(Debian: `tesseract-ocr` and `tesseract-ocr-LANG`). A page is rendered at `OcrOptions.dpi`,
lowered so that the image holds at most `max_pixels`, and read whole
(`Page.get_textpage_ocr(full=True)`). In an extraction process each page runs under a
watchdog of `page_timeout` seconds (`extraction.page_deadline`).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymupdf

from rag_gql.errors import InvalidInput
from rag_gql.services.extraction import page_deadline


class OcrMode(enum.StrEnum):
    """Which pages are read by OCR (setting `OCR`)."""

    AUTO = "auto"
    """Pages with no extractable text that show something."""
    OFF = "off"
    FORCE = "force"
    """Every page, its text layer ignored."""


@dataclass(frozen=True, slots=True)
class OcrOptions:
    """How to OCR (picklable, for the extraction processes); see the `OCR_*` settings."""

    mode: OcrMode = OcrMode.AUTO
    languages: str = "eng"
    """Tesseract's `+`-separated language codes."""
    dpi: int = 300
    max_pixels: int = 25_000_000
    page_timeout: float = 60.0
    """Seconds per page, enforced in extraction processes only."""
    tessdata: str | None = None
    """The language data folder; None: found from the installed `tesseract`."""

    @classmethod
    def from_settings(cls, settings: Any) -> OcrOptions:
        """The options of a `Settings`."""
        return cls(
            mode=OcrMode(settings.ocr),
            languages=settings.ocr_languages,
            dpi=settings.ocr_dpi,
            max_pixels=settings.ocr_max_pixels,
            page_timeout=settings.ocr_page_timeout,
            tessdata=settings.tessdata_prefix,
        )


@dataclass(frozen=True, slots=True)
class OcrAvailability:
    """Whether OCR can run: the language data folder, and the languages it lacks."""

    tessdata: str | None
    missing_languages: tuple[str, ...]

    @property
    def available(self) -> bool:
        """True when every language's data was found."""
        return self.tessdata is not None and not self.missing_languages


def availability(options: OcrOptions) -> OcrAvailability:
    """Looks for Tesseract's language data (runs `tesseract --list-langs` once per process
    when `options.tessdata` is None)."""
    folder = _tessdata(options.tessdata)
    languages = options.languages.split("+")
    if folder is None:
        return OcrAvailability(None, tuple(languages))
    missing = tuple(
        lang for lang in languages if not (Path(folder) / f"{lang}.traineddata").is_file()
    )
    return OcrAvailability(folder, missing)


def install_hint(options: OcrOptions) -> str:
    """What to install (or set) for OCR to work."""
    packages = " ".join(
        [
            "tesseract-ocr",
            *(
                f"tesseract-ocr-{lang.lower().replace('_', '-')}"
                for lang in options.languages.split("+")
            ),
        ]
    )
    return (
        f"install Tesseract with the {options.languages!r} language data (Debian: apt-get "
        f"install {packages}), or set TESSDATA_PREFIX to a folder holding "
        f"{', '.join(f'{lang}.traineddata' for lang in options.languages.split('+'))}; "
        "OCR=off skips OCR"
    )


def needs_ocr(page: Any, text: str, mode: OcrMode) -> bool:
    """Whether `page`, whose text layer reads `text`, is to be read by OCR."""
    if mode is OcrMode.FORCE:
        return True
    if mode is OcrMode.OFF or text.strip():
        return False
    # Something is drawn (an image, paths of outlined text): a blank page is not worth it.
    return bool(page.get_bboxlog())


def render_dpi(width: float, height: float, options: OcrOptions) -> int:
    """The resolution to render a `width` by `height` points page at: `options.dpi`, lowered
    until the image holds at most `options.max_pixels` pixels (at least 1)."""
    area = max(width, 1.0) * max(height, 1.0)
    fitting = 72 * math.sqrt(options.max_pixels / area)
    return max(1, min(options.dpi, math.floor(fitting)))


def ocr_page(page: Any, options: OcrOptions, label: str) -> str:
    """The text Tesseract reads on a PyMuPDF page (`label` names the document in errors).

    Raises:
        InvalidInput: Tesseract's language data is missing (the message says what to
            install), or the page could not be rendered.
    """
    found = availability(options)
    if not found.available:
        raise InvalidInput(
            f"page {page.number + 1} of {label} has no text layer and needs OCR, but "
            f"Tesseract's language data was not found ({', '.join(found.missing_languages)}): "
            f"{install_hint(options)}"
        )
    rect = page.rect
    dpi = render_dpi(rect.width, rect.height, options)
    try:
        with page_deadline(options.page_timeout):
            textpage = page.get_textpage_ocr(
                language=options.languages, dpi=dpi, full=True, tessdata=found.tessdata
            )
    except MemoryError:  # PARSE_MAX_MEMORY's doing, not a damaged file
        raise
    except Exception as exc:  # MuPDF's errors rendering a damaged page
        raise InvalidInput(f"{label}: OCR of page {page.number + 1} failed ({exc})") from exc
    text: str = page.get_text("text", textpage=textpage, sort=False)
    return text


_get_tessdata: Any = pymupdf.get_tessdata  # PyMuPDF leaves it unannotated


@functools.lru_cache(maxsize=4)
def _tessdata(prefix: str | None) -> str | None:
    try:
        folder: str = _get_tessdata(prefix)
    except RuntimeError:  # no TESSDATA_PREFIX and no `tesseract` on the PATH
        return None
    return folder if Path(folder).is_dir() else None
