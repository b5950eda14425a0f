"""Finds which numbered sources an answer cites: `[1]`, `[2][3]`, `[1, 4]`."""

from __future__ import annotations

import re

_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def cited_numbers(text: str, source_count: int) -> list[int]:
    """Returns the source numbers cited in `text`, in order of first citation.

    Numbers outside 1..`source_count` are ignored (a model may invent them).
    """
    seen: list[int] = []
    for match in _MARKER.finditer(text):
        for part in match.group(1).split(","):
            number = int(part)
            if 1 <= number <= source_count and number not in seen:
                seen.append(number)
    return seen


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: about 4 characters a token for English (OpenAI's rule of
    thumb); used only to keep prompts inside the model's context window."""
    return (len(text) + 3) // 4
