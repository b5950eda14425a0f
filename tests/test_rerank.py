"""The reranking stage: the reranker's order and `top_n` through the API, `rerank: false`,
failures (5xx, timeout, circuit open) giving the fused order with `reranked: false` and a
metric, never an error; `rerank: true` without a reranker; both wire formats of the client.

The reranker is the Ollama stand-in's `/v1/rerank` (cosine of its own embeddings, or a
scorer a test sets), so what is tested is behaviour, not quality.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag_gql.config import Settings
from rag_gql.errors import UpstreamError, UpstreamUnavailable
from rag_gql.providers.breaker import CircuitOpen
from rag_gql.providers.rerank import Ranked, RerankClient
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.ollama_standin import OllamaStandin, StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import Served, serve_server
from tests.support.smtp import Inbox
from tests.support.uploads import upload_ok

MARKERS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
PAGES = [f"Garden tools and pruning shears, note {m}, kept in the shed." for m in MARKERS]
QUERY = "garden tools pruning"
SEARCH = """query($q: String!, $k: Int, $r: Boolean) {
  search(query: $q, k: $k, rerank: $r) { text score rerankScore reranked keywordRank }
}"""
ASK = """mutation($q: String!, $r: Boolean) {
  ask(question: $q, k: 3, rerank: $r) { sources { text rerankScore reranked } }
}"""


def reranking(settings: Settings, url: str, **more: object) -> Settings:
    """`settings` with the stand-in as reranker (v1), quick to fail and to open its circuit."""
    return settings.model_copy(
        update={
            "rerank_url": url,
            "rerank_model": "standin-reranker",
            "rerank_timeout": 1.0,
            "rerank_attempts": 1,
            "rerank_breaker_threshold": 3,
            "rerank_breaker_reset": 60.0,
        }
        | more
    )


def marker(hit: Json) -> str:
    found = re.search(r"note (\w+)", str(hit["text"]))
    assert found, hit
    return found.group(1)


def metric(text: str, outcome: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "rag_gql_reranks_total" and s.labels.get("outcome") == outcome:
                return float(s.value)
    return 0.0


@pytest.fixture
async def stand(
    settings: Settings, ollama_server: OllamaStandin, ollama: StandinState, inbox: Inbox
) -> AsyncIterator[tuple[Served, GraphQLClient, str]]:
    """The app with the stand-in as its reranker, a user, one document of eight passages."""
    async with (
        serve_server(reranking(settings, ollama_server.url)) as served,
        httpx.AsyncClient(timeout=30) as http,
    ):
        gql = GraphQLClient(http, served.url)
        token = await sign_up(gql, inbox, "ada@example.com")
        await upload_ok(gql, "garden.pdf", make_pdf(PAGES), token)
        yield served, gql, token


async def search(gql: GraphQLClient, token: str, *, k: int, rerank: bool | None) -> list[Json]:
    data = await gql.data(SEARCH, {"q": QUERY, "k": k, "r": rerank}, token=token)
    hits: list[Json] = data["search"]
    return hits


async def test_hits_come_in_the_rerankers_order_with_its_scores(
    stand: tuple[Served, GraphQLClient, str], ollama: StandinState
) -> None:
    _, gql, token = stand
    fused = [marker(h) for h in await search(gql, token, k=8, rerank=False)]
    assert sorted(fused) == sorted(MARKERS)
    # The reranker prefers the fused order reversed.
    ollama.rerank_scorer = lambda q, d: float(fused.index(re.findall(r"note (\w+)", d)[0]))

    hits = await search(gql, token, k=3, rerank=None)  # null: configured, so reranked
    assert [marker(h) for h in hits] == fused[::-1][:3]
    assert [h["rerankScore"] for h in hits] == [7.0, 6.0, 5.0]
    assert all(h["reranked"] for h in hits)
    # top_n is k; every candidate (8 < RERANK_CANDIDATES) was sent, the query as asked.
    assert ollama.last_rerank is not None
    query, documents, top_n = ollama.last_rerank
    assert (query, len(documents), top_n) == (QUERY, 8, 3)
    # `score` stays the fused score; the keyword rank is kept.
    assert all(h["score"] > 0 and h["keywordRank"] is not None for h in hits)

    ollama.rerank_requests = 0
    plain = await search(gql, token, k=3, rerank=False)
    assert [marker(h) for h in plain] == fused[:3]
    assert all(h["rerankScore"] is None and h["reranked"] is False for h in plain)
    assert ollama.rerank_requests == 0


async def test_only_rerank_candidates_are_sent(
    settings: Settings, ollama_server: OllamaStandin, ollama: StandinState, inbox: Inbox
) -> None:
    few = reranking(settings, ollama_server.url, rerank_candidates=4)
    async with serve_server(few) as served, httpx.AsyncClient(timeout=30) as http:
        gql = GraphQLClient(http, served.url)
        token = await sign_up(gql, inbox, "ada@example.com")
        await upload_ok(gql, "garden.pdf", make_pdf(PAGES), token)
        fused = [marker(h) for h in await search(gql, token, k=8, rerank=False)]
        hits = await search(gql, token, k=2, rerank=True)
        assert ollama.last_rerank is not None
        _, documents, top_n = ollama.last_rerank
        assert (len(documents), top_n) == (4, 2)
        assert {marker(h) for h in hits} <= set(fused[:4])


@pytest.mark.parametrize("failure", ["http_500", "timeout"])
async def test_a_failing_reranker_gives_the_fused_order_and_a_metric(
    stand: tuple[Served, GraphQLClient, str], ollama: StandinState, failure: str
) -> None:
    served, gql, token = stand
    fused = [marker(h) for h in await search(gql, token, k=3, rerank=False)]
    if failure == "http_500":
        ollama.rerank_fail_status = 500
    else:
        ollama.rerank_delay = 1.5  # past RERANK_TIMEOUT
    hits = await search(gql, token, k=3, rerank=True)
    assert [marker(h) for h in hits] == fused
    assert all(h["reranked"] is False and h["rerankScore"] is None for h in hits)
    text = (await gql.http.get(f"{served.metrics_url}/metrics")).text
    assert metric(text, "unavailable") == 1
    assert metric(text, "ok") == 0


async def test_the_open_circuit_skips_the_reranker(
    stand: tuple[Served, GraphQLClient, str], ollama: StandinState
) -> None:
    served, gql, token = stand
    ollama.rerank_fail_status = 503
    for _ in range(3):  # RERANK_BREAKER_THRESHOLD
        await search(gql, token, k=3, rerank=True)
    assert ollama.rerank_requests == 3
    ollama.rerank_fail_status = None
    hits = await search(gql, token, k=3, rerank=True)
    assert all(h["reranked"] is False for h in hits)
    assert ollama.rerank_requests == 3  # refused without a request
    text = (await gql.http.get(f"{served.metrics_url}/metrics")).text
    assert (metric(text, "unavailable"), metric(text, "circuit_open")) == (3, 1)


async def test_answers_rerank_their_sources(
    stand: tuple[Served, GraphQLClient, str], ollama: StandinState
) -> None:
    _, gql, token = stand
    ollama.rerank_scorer = lambda q, d: 1.0 if "hotel" in d else 0.0
    sources = (await gql.data(ASK, {"q": QUERY, "r": True}, token=token))["ask"]["sources"]
    assert marker(sources[0]) == "hotel"
    assert sources[0]["rerankScore"] == 1.0 and all(s["reranked"] for s in sources)
    sources = (await gql.data(ASK, {"q": QUERY, "r": False}, token=token))["ask"]["sources"]
    assert not any(s["reranked"] for s in sources)


async def test_rerank_without_a_reranker_is_bad_input_and_null_means_off(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    await upload_ok(gql, "garden.pdf", make_pdf(PAGES), token)
    body = await gql.execute(SEARCH, {"q": QUERY, "k": 3, "r": True}, token=token)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "RERANK_URL" in body["errors"][0]["message"]
    body = await gql.execute(ASK, {"q": QUERY, "r": True}, token=token)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    for rerank in (None, False):
        hits = await search(gql, token, k=3, rerank=rerank)
        assert len(hits) == 3 and not any(h["reranked"] for h in hits)
    assert ollama.rerank_requests == 0


# --- the client ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v1", "tei"])
async def test_the_client_speaks_both_formats(
    ollama_server: OllamaStandin, ollama: StandinState, api: str
) -> None:
    ollama.rerank_scorer = lambda q, d: float(len(d))
    documents = ["a", "abc", "ab", "abcd"]
    async with httpx.AsyncClient(base_url=ollama_server.url) as http:
        client = RerankClient(http, model="m", api="tei" if api == "tei" else "v1")
        assert await client.rerank("q", documents, top_n=2) == [Ranked(3, 4.0), Ranked(1, 3.0)]
        assert await client.rerank("q", [], top_n=2) == []
    assert ollama.last_rerank == ("q", documents, None if api == "tei" else 2)


def _mock(reply: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[Json]]:
    sent: list[Json] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        if isinstance(reply, Exception):
            raise reply
        return reply

    return httpx.MockTransport(handle), sent


@pytest.mark.parametrize(
    "body",
    [
        {"results": [{"index": 5, "relevance_score": 1.0}]},  # out of range
        {"results": [{"index": 0, "relevance_score": "high"}]},
        {"results": [{"index": 0, "relevance_score": 1}, {"index": 0, "relevance_score": 2}]},
        {"data": []},
        [1, 2],
    ],
)
async def test_a_malformed_answer_is_an_upstream_error(body: object) -> None:
    transport, _ = _mock(httpx.Response(200, json=body))
    async with httpx.AsyncClient(transport=transport, base_url="http://rerank") as http:
        with pytest.raises(UpstreamError):
            await RerankClient(http, model="m").rerank("q", ["a", "b"], top_n=2)


async def test_unreachable_and_5xx_are_retried_4xx_is_not_and_the_circuit_opens() -> None:
    transport, sent = _mock(httpx.ConnectError("refused"))
    async with httpx.AsyncClient(transport=transport, base_url="http://rerank") as http:
        client = RerankClient(http, model="m", attempts=2, breaker_threshold=4)
        for _ in range(2):
            with pytest.raises(UpstreamUnavailable) as failed:
                await client.rerank("q", ["a"], top_n=1)
            assert not isinstance(failed.value, CircuitOpen)
        assert len(sent) == 4
        with pytest.raises(CircuitOpen):
            await client.rerank("q", ["a"], top_n=1)
        assert len(sent) == 4

    transport, sent = _mock(httpx.Response(503, text="busy"))
    async with httpx.AsyncClient(transport=transport, base_url="http://rerank") as http:
        with pytest.raises(UpstreamUnavailable):
            await RerankClient(http, model="m", attempts=2).rerank("q", ["a"], top_n=1)
        assert len(sent) == 2

    transport, sent = _mock(httpx.Response(404, json={"error": "no such model"}))
    async with httpx.AsyncClient(transport=transport, base_url="http://rerank") as http:
        client = RerankClient(http, model="m", attempts=2, breaker_threshold=1)
        for _ in range(2):  # an answer: neither retried nor counted by the circuit
            with pytest.raises(UpstreamError, match="404"):
                await client.rerank("q", ["a"], top_n=1)
        assert len(sent) == 2
    assert sent[0] == {"model": "m", "query": "q", "documents": ["a"], "top_n": 1}
