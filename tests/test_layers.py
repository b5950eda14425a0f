"""The import layers hold: graphql → ingestion → services → repositories and providers
(independent of each other) → db; resolvers and types talk to services only; observability
depends on nothing above it. The contracts are `[tool.importlinter]` in pyproject.toml, checked by
import-linter's `lint-imports`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_contracts_hold() -> None:
    run = subprocess.run(  # noqa: S603 (our own venv's script, fixed arguments)
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in run.stdout


def test_contracts_name_the_layers() -> None:
    """The layers checked are the ones docs/architecture.md draws, top first."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    contracts = {c["id"]: c for c in config["contracts"]}
    assert contracts["layers"]["layers"] == [
        "rag_gql.graphql",
        "rag_gql.ingestion",
        "rag_gql.services",
        "rag_gql.repositories | rag_gql.providers",
        "rag_gql.db",
    ]
    through = contracts["graphql-through-services"]
    assert through["source_modules"] == ["rag_gql.graphql"]
    assert set(through["forbidden_modules"]) == {"rag_gql.repositories", "rag_gql.db"}
    below = contracts["observability-below"]
    assert below["source_modules"] == ["rag_gql.observability"]
    assert set(below["forbidden_modules"]) >= {
        "rag_gql.graphql",
        "rag_gql.ingestion",
        "rag_gql.services",
        "rag_gql.repositories",
    }
