"""`docs/configuration.md`, rendered from the `Settings` class (`rag-gql export-config-docs`).

Each field of `rag_gql.config.Settings` becomes one row, in the class's order: its
environment variable (the field's name in capitals), its default, its type with the bounds
its `Field` sets (`gt`, `ge`, `lt`, `le`), and its `description`. The page is regenerated,
never edited; `tests/test_configuration_docs.py` fails while it differs from the class.
"""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from rag_gql.config import Settings

REGENERATE = "rag-gql export-config-docs --output docs/configuration.md"
"""The command that rewrites the page; the sync test's failure message quotes it."""

HEADER = f"""\
<!-- Generated from rag_gql/config.py (the Settings class): do not edit by hand.
     Regenerate with `{REGENERATE}`. -->

# Configuration

Every setting of rag-gql, read from the environment or from a `.env` file in the working
directory (the environment wins). Names are case-insensitive; booleans are `true` or `false`;
durations are seconds and sizes characters unless the name or the text says otherwise. Rate
limits use the [`limits`](https://limits.readthedocs.io/en/stable/quickstart.html#rate-limit-string-notation)
notation: `60/minute`, `10/hour`, `1000/day`.

The OpenTelemetry variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, ...) are read
by the OpenTelemetry SDK, not by this class: see [operations](operations.md#tracing).

| Setting | Default | Type | Meaning |
| --- | --- | --- | --- |
"""

_BYTE_UNITS = ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


def environment_name(field_name: str) -> str:
    """The environment variable of a field (pydantic-settings matches it case-insensitively)."""
    return field_name.upper()


def undescribed(settings_class: type[BaseSettings] = Settings) -> list[str]:
    """The environment names of the settings that have no `description`, in class order."""
    return [
        environment_name(name)
        for name, field in settings_class.model_fields.items()
        if not (field.description or "").strip()
    ]


def settings_reference(settings_class: type[BaseSettings] = Settings) -> str:
    """The whole Markdown page for `settings_class`: `HEADER`, then one table row per field.

    A field without a description gets an empty meaning (`undescribed` names them).
    """
    rows = [
        "| "
        + " | ".join(
            (
                f"`{environment_name(name)}`",
                _default(name, field),
                _type(field),
                _cell(field.description or ""),
            )
        )
        + " |"
        for name, field in settings_class.model_fields.items()
    ]
    return HEADER + "\n".join(rows) + "\n"


def write_reference(output: Path | None) -> str:
    """Renders the page and writes it to `output` when given; returns it.

    Raises:
        OSError: `output` cannot be written.
    """
    page = settings_reference()
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
    return page


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _default(name: str, field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int) and name.endswith(("_bytes", "_memory")):
        for size, unit in _BYTE_UNITS:
            if value >= size and value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{value}`"


def _type(field: FieldInfo) -> str:
    bounds = [
        f"{symbol} {_number(getattr(rule, attr))}"
        for rule in field.metadata
        for attr, symbol in _BOUNDS
        if getattr(rule, attr, None) is not None
    ]
    described = _annotation(field.annotation)
    return ", ".join([f"{described} {bounds[0]}", *bounds[1:]]) if bounds else described


def _annotation(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return " \\| ".join(_annotation(kind) for kind in kinds)
    names: dict[object, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
        SecretStr: "secret string",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
