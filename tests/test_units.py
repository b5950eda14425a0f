"""Pure functions: chunking, URL normalization, settings, bearer parsing, prompts, cursors;
the context's document loader."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from starlette.requests import Request

from rag_gql.config import Settings
from rag_gql.db import normalize_url
from rag_gql.db.models import Document, Role
from rag_gql.errors import InvalidInput
from rag_gql.graphql.context import Context, bearer_token
from rag_gql.resources import Services
from rag_gql.services.access import Principal
from rag_gql.services.chunking import chunk_pages, normalize_page
from rag_gql.services.documents import decode_cursor, encode_cursor


def test_chunks_keep_page_and_offsets() -> None:
    words = " ".join(f"word{i}" for i in range(400))
    chunks = chunk_pages(["short first page", words, "   ", "last"], size=200, overlap=40)
    assert chunks[0].page == 1 and chunks[0].text == "short first page"
    assert {c.page for c in chunks} == {1, 2, 4}  # the blank page gives no chunk
    page2 = normalize_page(words)
    for chunk in (c for c in chunks if c.page == 2):
        assert page2[chunk.char_start : chunk.char_end] == chunk.text
        assert len(chunk.text) <= 200
        assert not chunk.text.startswith(" ") and "word" in chunk.text
    spans = [(c.char_start, c.char_end) for c in chunks if c.page == 2]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start < end, "consecutive chunks overlap"
    assert spans[-1][1] == len(page2), "the page is covered to its end"


def test_chunks_break_on_words_not_inside_them() -> None:
    text = "alpha beta gamma delta " * 50
    for chunk in chunk_pages([text], size=100, overlap=20):
        assert chunk.text.split()[0] in {"alpha", "beta", "gamma", "delta"}
        assert chunk.text.split()[-1].rstrip(".") in {"alpha", "beta", "gamma", "delta"}


def test_chunking_rejects_overlap_not_below_size() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_pages(["x"], size=100, overlap=100)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/rag", "postgresql+asyncpg://u:p@db:5432/rag"),
        ("postgres://u:p@db/rag", "postgresql+asyncpg://u:p@db/rag"),
        ("postgresql+asyncpg://u@db/rag", "postgresql+asyncpg://u@db/rag"),
        ("postgresql+psycopg://u@db/rag", "postgresql+asyncpg://u@db/rag"),
        (
            "postgresql://u@/rag?host=/run/postgresql",
            "postgresql+asyncpg://u@/rag?host=/run/postgresql",
        ),
    ],
)
def test_database_urls_are_normalized(given: str, expected: str) -> None:
    assert make_url(normalize_url(given)) == make_url(expected)


def test_non_postgres_url_is_refused() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        normalize_url("mysql://u@db/rag")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_URL", "http://ollama:11434")
    monkeypatch.setenv("EMBED_DIM", "384")
    monkeypatch.setenv("CHUNK_SIZE", "500")
    monkeypatch.setenv("CHUNK_OVERLAP", "50")
    monkeypatch.setenv("SMTP_STARTTLS", "true")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    settings = Settings(_env_file=None)
    assert settings.ollama_url == "http://ollama:11434"
    assert (settings.embed_dim, settings.chunk_size, settings.chunk_overlap) == (384, 500, 50)
    assert settings.smtp_starttls is True
    assert settings.ollama_embed_model == "nomic-embed-text"
    assert settings.ollama_chat_model == "llama3.2"


def test_overlap_must_be_below_chunk_size() -> None:
    with pytest.raises(ValidationError, match="CHUNK_OVERLAP"):
        Settings(_env_file=None, chunk_size=200, chunk_overlap=200)


def test_generated_jwt_secret_is_kept(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    first = settings.resolved_jwt_secret()
    assert len(first) >= 32
    assert Settings(_env_file=None, data_dir=tmp_path).resolved_jwt_secret() == first
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_cursor_round_trip_and_garbage() -> None:
    when, ident = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(when, ident)) == (when, ident)
    with pytest.raises(InvalidInput):
        decode_cursor("not a cursor")


async def test_documents_loaded_together_share_one_query() -> None:
    """`Context.load_document`: loads started together are one `get_many`, duplicates once;
    nothing is cached, so a later load asks again (a WebSocket's context outlives operations)."""
    calls: list[set[uuid.UUID]] = []
    found = {uuid.uuid4(): Document(filename="a.pdf"), uuid.uuid4(): Document(filename="b.pdf")}

    class Documents:
        async def get_many(
            self, principal: Principal, ids: set[uuid.UUID]
        ) -> dict[uuid.UUID, Document]:
            calls.append(ids)
            return {i: found[i] for i in ids if i in found}

    services = cast(Services, SimpleNamespace(documents=Documents()))
    context = Context(services=services, request=Request({"type": "http", "headers": []}))
    context.principal = Principal(workspace_id=uuid.uuid4(), role=Role.VIEWER)
    a, b = found
    missing = uuid.uuid4()
    loaded = await asyncio.gather(*(context.load_document(i) for i in (a, b, a, missing)))
    assert [d.filename if d else None for d in loaded] == ["a.pdf", "b.pdf", "a.pdf", None]
    assert calls == [{a, b, missing}]
    await context.load_document(a)
    assert calls[1:] == [{a}]
