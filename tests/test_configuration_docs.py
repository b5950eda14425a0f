"""`docs/configuration.md` is rendered from `Settings`; these keep the two equal and complete."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from rag_gql.cli import main
from rag_gql.config import Settings
from rag_gql.config_docs import REGENERATE, settings_reference, undescribed

CONFIGURATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_doc_is_in_sync() -> None:
    assert CONFIGURATION_DOC.read_text(encoding="utf-8") == settings_reference(), (
        f"docs/configuration.md is stale; regenerate it with `{REGENERATE}`"
    )


def test_every_setting_is_described() -> None:
    assert undescribed() == [], (
        "give these settings a `Field(description=...)` in rag_gql/config.py (it is their "
        f"documentation), then run `{REGENERATE}`"
    )


def test_every_setting_has_a_row() -> None:
    page = settings_reference()
    for name in Settings.model_fields:
        assert f"\n| `{name.upper()}` |" in page, name


def test_export_config_docs_writes_the_page(tmp_path: Path) -> None:
    output = tmp_path / "docs" / "configuration.md"
    assert main(["export-config-docs", "--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == settings_reference()


def test_export_config_docs_prints_without_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-config-docs"]) == 0
    assert capsys.readouterr().out == settings_reference()


class _Sample(BaseSettings):
    """Settings shaped like the real ones, to pin how each kind of field is rendered."""

    plain: int = 3
    bounded: float = Field(default=0.5, gt=0, le=1, description="A share | of something.")
    big_bytes: int = Field(default=3 * 1024**2, description="Bytes.")
    unset: str | None = None


def test_rows_show_default_type_bounds_and_escaped_meaning() -> None:
    rows = settings_reference(_Sample).splitlines()[-4:]
    assert rows == [
        "| `PLAIN` | `3` | integer |  |",
        "| `BOUNDED` | `0.5` | number > 0, ≤ 1 | A share \\| of something. |",
        "| `BIG_BYTES` | `3145728` (3 MiB) | integer | Bytes. |",
        "| `UNSET` | unset | string |  |",
    ]
    assert undescribed(_Sample) == ["PLAIN", "UNSET"]
