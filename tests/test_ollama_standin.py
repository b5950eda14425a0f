"""Tests of the Ollama stand-in used by the rest of the suite (tests/support/ollama_standin.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.ollama_standin import (
    NOT_FOUND_REPLY,
    OllamaStandin,
    StandinState,
    embed_text,
    memoized,
    split_tokens,
    tokenize,
)


@pytest.fixture(scope="module")
def standin() -> Iterator[OllamaStandin]:
    """One stand-in for the module (small dimension keeps responses short)."""
    with OllamaStandin(StandinState(dim=256)) as server:
        yield server


@pytest.fixture
def ollama(standin: OllamaStandin) -> Iterator[OllamaStandin]:
    """The shared stand-in with its knobs reset before and after each test."""
    standin.state.reset()
    yield standin
    standin.state.reset()


@pytest.fixture
def client(ollama: OllamaStandin) -> Iterator[httpx.Client]:
    """An HTTP client bound to the stand-in."""
    with httpx.Client(base_url=ollama.url, timeout=5.0) as http:
        yield http


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _chat_body(question: str, *, stream: bool = True) -> dict[str, Any]:
    system = "Answer only from the sources below and cite them as [n].\n\nSources:\n"
    system += "[1] (guide.pdf, p. 3) pgvector adds an HNSW vector index to PostgreSQL.\n"
    system += "[2] (bread.pdf, p. 1) Knead the dough for ten minutes.\n"
    return {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "stream": stream,
    }


def test_version_and_tags(client: httpx.Client) -> None:
    assert client.get("/api/version").json() == {"version": "0.12.0"}
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert names == ["nomic-embed-text:latest", "llama3.2:latest"]


def test_embed_shapes_and_unit_norm(client: httpx.Client, ollama: OllamaStandin) -> None:
    texts = ["PostgreSQL vector index", "", "the and of", "read.fwf reads fixed-width files"]
    response = client.post("/api/embed", json={"model": "nomic-embed-text:latest", "input": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "nomic-embed-text:latest"
    assert len(body["embeddings"]) == len(texts)
    for vector in body["embeddings"]:
        assert len(vector) == 256
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-9)
    assert body["embeddings"][1] == [1.0] + [0.0] * 255  # empty text -> e_0
    assert isinstance(body["total_duration"], int)
    assert body["prompt_eval_count"] == 3 + 0 + 3 + 4
    single = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x y"}).json()
    assert len(single["embeddings"]) == 1
    assert ollama.state.embed_requests == 2
    assert ollama.state.embed_inputs == 5


def test_embeddings_are_deterministic_and_meaningful() -> None:
    postgres = embed_text("PostgreSQL vector index", 768)
    bread = embed_text("Baking bread at home", 768)
    query = embed_text("vector index in postgres", 768)
    assert _cosine(query, postgres) > 0.5
    assert _cosine(query, postgres) > _cosine(query, bread) + 0.3
    assert embed_text("vector index in postgres", 768) == query
    assert tokenize("Use read.fwf() in R") == ["use", "read.fwf", "read", "fwf", "r"]


def test_embed_errors(client: httpx.Client) -> None:
    missing = client.post("/api/embed", json={"model": "nope", "input": "x"})
    assert missing.status_code == 404
    assert missing.json() == {"error": 'model "nope" not found, try pulling it first'}
    no_input = client.post("/api/embed", json={"model": "nomic-embed-text"})
    assert no_input.status_code == 400
    assert "error" in no_input.json()
    bad_input = client.post("/api/embed", json={"model": "nomic-embed-text", "input": [1, 2]})
    assert bad_input.status_code == 400


def test_chat_streams_ndjson(client: httpx.Client, ollama: OllamaStandin) -> None:
    with client.stream("POST", "/api/chat", json=_chat_body("What index does pgvector add?")) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) > 5
    assert all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == len(lines) - 1
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
    assert final["prompt_eval_count"] > 10
    text = "".join(line["message"]["content"] for line in lines)
    assert text.startswith("According to the sources, (guide.pdf, p. 3) pgvector adds")
    assert text.endswith("[1].")
    assert ollama.state.chat_requests == 1
    assert ollama.state.last_chat_messages[1]["content"] == "What index does pgvector add?"


def test_chat_without_stream(client: httpx.Client, ollama: OllamaStandin) -> None:
    body = client.post("/api/chat", json=_chat_body("Q?", stream=False)).json()
    assert body["done"] is True
    assert body["message"]["content"].endswith("PostgreSQL [1].")
    assert body["eval_count"] == len(split_tokens(body["message"]["content"]))

    no_sources = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}
    body = client.post("/api/chat", json={**no_sources, "stream": False}).json()
    assert body["message"]["content"] == NOT_FOUND_REPLY

    ollama.state.chat_reply = "Canned answer."
    body = client.post("/api/chat", json={**no_sources, "stream": False}).json()
    assert body["message"]["content"] == "Canned answer."


def test_chat_unknown_model(client: httpx.Client) -> None:
    response = client.post("/api/chat", json={**_chat_body("Q?"), "model": "mistral"})
    assert response.status_code == 404
    assert response.json() == {"error": 'model "mistral" not found, try pulling it first'}


def test_fail_status(client: httpx.Client, ollama: OllamaStandin) -> None:
    ollama.state.fail_status = 503
    ollama.state.fail_message = "server busy"
    for path, body in (
        ("/api/embed", {"model": "nomic-embed-text", "input": "x"}),
        ("/api/chat", _chat_body("Q?")),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 503
        assert response.json() == {"error": "server busy"}
    ollama.state.fail_times = 1
    assert client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"}).is_error
    assert client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"}).is_success
    assert ollama.state.embed_requests == 3


def test_die_after_tokens_breaks_stream(client: httpx.Client, ollama: OllamaStandin) -> None:
    ollama.state.die_after_tokens = 3
    received: list[dict[str, Any]] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/api/chat", json=_chat_body("Q?")) as response,
    ):
        assert response.status_code == 200
        received.extend(json.loads(line) for line in response.iter_lines() if line)
    assert len(received) <= 3
    assert not any(line["done"] for line in received)
    # The server keeps serving after a dropped connection.
    ollama.state.die_after_tokens = None
    assert client.post("/api/chat", json=_chat_body("Q?", stream=False)).json()["done"] is True


def test_split_tokens_round_trips() -> None:
    text = "According to the sources, pgvector adds an index  [1]. "
    tokens = split_tokens(text)
    assert "".join(tokens) == text
    assert tokens[:3] == ["According", " to", " the"]


def test_start_stop_is_quick() -> None:
    import time

    began = time.perf_counter()
    with OllamaStandin() as server:
        assert httpx.get(f"{server.url}/api/version", timeout=5.0).status_code == 200
        started = time.perf_counter() - began
    assert started < 1.0


def test_memoized_embeds_each_new_text_once_and_keeps_the_order() -> None:
    calls: list[list[str]] = []

    def embedder(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[float(len(text))] for text in texts]

    embed = memoized(embedder)
    assert embed(["ab", "c", "ab"]) == [[2.0], [1.0], [2.0]]
    assert embed(["c", "def"]) == [[1.0], [3.0]]
    assert embed(["def"]) == [[3.0]]
    assert calls == [["ab", "c"], ["def"]]
