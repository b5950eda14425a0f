"""PostgreSQL `text` cannot hold U+0000 (NUL): the one rule for text on its way to the database.

Where the text comes from decides what becomes of a NUL in it: an operation sent over GraphQL
holding one is refused whole (`graphql.inputs`, BAD_USER_INPUT), so no resolver sees one; an
extracted page drops them (`chunking.normalize_page`); a query from elsewhere (the CLI's eval)
has them as spaces (`RetrievalService.check`); a model's streamed token has them as U+FFFD
(`answer_runs`). Text extracted from a PDF may also hold UTF-16 surrogates, which no UTF-8
encoder takes: `repair_surrogates` (`parsing.extract_units`).
"""

from __future__ import annotations

import re

NUL = "\x00"
"""The character PostgreSQL's `text` refuses."""


def replace_nul(text: str, replacement: str = "") -> str:
    """`text` with every NUL replaced by `replacement` (by default, removed)."""
    return text.replace(NUL, replacement)


_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_surrogates(text: str) -> str:
    """`text` with its UTF-16 surrogate code points, which UTF-8 (so PostgreSQL and JSON)
    cannot encode, made whole: a high and low pair becomes the character it encodes, a lone
    one U+FFFD. (PyMuPDF hands them out of PDFs whose fonts map glyphs to halves of a pair.)"""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
