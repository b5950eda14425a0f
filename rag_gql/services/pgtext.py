"""PostgreSQL `text` cannot hold U+0000 (NUL): the one rule for text on its way to the database.

Where the text comes from decides what becomes of a NUL in it: an operation sent over GraphQL
holding one is refused whole (`graphql.inputs`, BAD_USER_INPUT), so no resolver sees one; an
extracted page drops them (`chunking.normalize_page`); a query from elsewhere (the CLI's eval)
has them as spaces (`RetrievalService.check`); a model's streamed token has them as U+FFFD
(`answer_runs`).
"""

from __future__ import annotations

NUL = "\x00"
"""The character PostgreSQL's `text` refuses."""


def replace_nul(text: str, replacement: str = "") -> str:
    """`text` with every NUL replaced by `replacement` (by default, removed)."""
    return text.replace(NUL, replacement)
