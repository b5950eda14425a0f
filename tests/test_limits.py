"""GraphQL abuse limits: each rejected with its own code, before any resolver runs.

These tests serve the production defaults (conftest's settings loosen the limits for the
other tests, which batch many searches into one request).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from graphql import parse

from rag_gql.config import Settings
from rag_gql.errors import DomainError
from rag_gql.graphql.limits import (
    DEFAULT_LIST_SIZE,
    CheckedDocuments,
    Limits,
    check_shape,
    estimate_cost,
)
from rag_gql.graphql.schema import schema
from rag_gql.services.documents import DocumentService
from tests.conftest import LOOSE_GRAPHQL_LIMITS
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import StandinState
from tests.support.serving import serve, serve_client
from tests.support.smtp import Inbox

REGISTER = 'register(email: "eve{n}@example.com", password: "correct horse battery staple")'


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """conftest's settings with the production defaults of the GraphQL limits."""
    defaults = {name: Settings.model_fields[name].default for name in LOOSE_GRAPHQL_LIMITS}
    return settings.model_copy(update=defaults)


@pytest.fixture
async def gql(settings: Settings) -> AsyncIterator[GraphQLClient]:
    """A client of the app served with `settings` (the production limits)."""
    async with serve_client(settings) as gql:
        yield gql


def refused(body: Json, code: str) -> str:
    """Asserts `body` is one error with `code` and no data; returns its message."""
    assert body.get("data") is None, body
    (error,) = body["errors"]
    assert error["extensions"]["code"] == code, body
    message: str = error["message"]
    return message


async def post(gql: GraphQLClient, query: str, variables: Json | None = None) -> Json:
    return await gql.execute(query, variables)


def nested(depth: int) -> str:
    """`{ me { me { ... { id } } } }`, `depth` levels of fields (`{ me { id } }` is 2)."""
    inner = "id"
    for _ in range(depth - 1):
        inner = f"me {{ {inner} }}"
    return "{ " + inner + " }"


async def test_too_deep(gql: GraphQLClient, inbox: Inbox, ollama: StandinState) -> None:
    # The schema has no type that selects itself, so the document is invalid too: the depth
    # limit runs before validation, and is what answers.
    body = await post(gql, nested(12))
    message = refused(body, "QUERY_TOO_DEEP")
    assert message == "The query nests fields 12 levels deep; the limit is 10"
    # Within the limit, the same shape reaches validation instead.
    body = await post(gql, nested(10))
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_too_many_aliases_does_no_work(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    fields = " ".join(f"r{n}: {REGISTER.format(n=n)} {{ email }}" for n in range(16))
    body = await post(gql, f"mutation {{ {fields} }}")
    assert refused(body, "TOO_MANY_ALIASES") == "The query uses 16 aliases; the limit is 15"
    assert inbox.messages == []  # no account registered, no code sent

    # Fragments count at each spread.
    body = await post(
        gql,
        "{ ...F ...F ...F ...F } fragment F on Query { a: me { id } b: me { id } "
        "c: me { id } d: me { id } }",
    )
    refused(body, "TOO_MANY_ALIASES")


async def test_too_large(gql: GraphQLClient, inbox: Inbox, ollama: StandinState) -> None:
    padding = " ".join(["__typename"] * 2100)
    body = await post(gql, f"mutation {{ {REGISTER.format(n=1)} {{ email }} {padding} }}")
    message = refused(body, "QUERY_TOO_LARGE")
    assert message == "The query is too large: at most 20000 characters and 2000 tokens"
    body = await post(gql, "{ me { id } }" + " " * 20_000)
    refused(body, "QUERY_TOO_LARGE")
    body = await post(gql, "#\n" * 2001 + "{ me { id } }")
    refused(body, "QUERY_TOO_LARGE")
    assert inbox.messages == []


async def test_too_costly_does_no_work(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    ask = 'ask(question: "why?", k: 50) { text sources { text page document { id filename } } }'
    body = await gql.execute(
        "mutation { " + " ".join(f"a{n}: {ask}" for n in range(8)) + " }", token=token
    )
    message = refused(body, "QUERY_TOO_COSTLY")
    assert message == (
        "The query's estimated cost is 2024; the limit is 2000. "
        "Ask for fewer items (`first`, `k`) or fewer fields."
    )
    assert ollama.embed_requests == 0 and ollama.chat_requests == 0

    # A `k` or `first` above what the resolver accepts counts as that maximum: the resolver
    # refuses it, with a more useful message than a cost error.
    body = await gql.execute(
        'mutation($k: Int) { ask(question: "why?", k: $k) { text } }', {"k": 100_000}, token=token
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert ollama.embed_requests == 0 and ollama.chat_requests == 0

    search = '{ search(query: "x", k: 50) { text page document { id filename } } }'
    aliased = " ".join(f"s{n}: " + search[2:-2] for n in range(8))
    body = await gql.execute("{ " + aliased + " }", token=token)
    refused(body, "QUERY_TOO_COSTLY")  # 8 x 251
    assert ollama.embed_requests == 0
    body = await gql.execute(search, token=token)
    assert "errors" not in body, body


async def test_cost_estimate() -> None:
    from graphql import parse

    def cost(query: str, variables: Json | None = None) -> int:
        return estimate_cost(schema._schema, parse(query).definitions, variables or {})

    assert cost("{ me { id email } }") == 3
    assert cost('{ search(query: "x", k: 50) { text document { id } } }') == 1 + 50 * 3
    assert cost('{ search(query: "x") { text } }') == 1 + 5 * 1  # the schema default k
    assert cost('query($k: Int) { search(query: "x", k: $k) { text } }', {"k": 7}) == 8
    assert cost('query($k: Int = 3) { search(query: "x", k: $k) { text } }') == 4
    # A connection's `first` sizes its edges.
    assert cost("{ documents(first: 30) { edges { node { id } } pageInfo { hasNextPage } } }") == (
        1 + (1 + 30 * (1 + 1)) + (1 + 1)
    )
    # A list without `first`/`k`.
    assert cost("{ workspaces { id } }") == 1 + DEFAULT_LIST_SIZE
    # Fragments, inline fragments on a union.
    assert (
        cost(
            'subscription { answer(question: "q", k: 4) { __typename '
            "... on AnswerSources { sources { text } } ... on AnswerToken { text } } }"
        )
        == 1 + 1 + (1 + 4 * 1) + 1
    )
    assert cost("{ ...F } fragment F on Query { me { id } }") == 2
    # Sizes above the resolvers' maximum count as that maximum.
    capped = estimate_cost(
        schema._schema, parse('{ search(query: "x", k: 9999) { text } }').definitions, {}, {"k": 50}
    )
    assert capped == 1 + 50


def test_fragment_bomb_is_linear() -> None:
    from graphql import parse

    levels = 40  # 2**40 paths if fragments were expanded
    fragments = " ".join(
        f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)
    )
    document = parse(
        "{ ...F0 } " + fragments + f" fragment F{levels} on Query {{ a: me {{ id }} }}"
    )
    limits = Limits.from_settings(Settings(_env_file=None))
    error = check_shape(document.definitions, limits)
    assert error is not None and error.extensions == {"code": "TOO_MANY_ALIASES"}
    assert str(2**levels) in error.message


async def test_introspection_off(settings: Settings, inbox: Inbox, ollama: StandinState) -> None:
    async with (
        serve(settings.model_copy(update={"graphql_introspection": False})) as url,
        httpx.AsyncClient() as http,
    ):
        gql = GraphQLClient(http, url)
        for query in ("{ __schema { types { name } } }", '{ __type(name: "Query") { name } }'):
            body = await gql.execute(query)
            assert refused(body, "INTROSPECTION_DISABLED") == (
                "Introspection is disabled on this server"
            )
        body = await gql.execute("query { __typename }")
        assert body == {"data": {"__typename": "Query"}}


async def test_introspection_on_by_default(gql: GraphQLClient) -> None:
    body = await gql.execute("{ __schema { queryType { name } } }")
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_no_field_suggestions(
    settings: Settings, gql: GraphQLClient, ollama: StandinState
) -> None:
    body = await gql.execute("{ documets { edges { cursor } } }")
    message = refused(body, "GRAPHQL_VALIDATION_FAILED")
    assert message == "Cannot query field 'documets' on type 'Query'."
    body = await gql.execute('{ search(query: "x", mdoe: HYBRID) { text } }')
    assert "Did you mean" not in json.dumps(body)

    async with (
        serve(settings.model_copy(update={"graphql_suggestions": True})) as url,
        httpx.AsyncClient() as http,
    ):
        body = await GraphQLClient(http, url).execute("{ documets { edges { cursor } } }")
        assert "Did you mean 'documents'" in body["errors"][0]["message"]


async def test_batching_is_refused(server_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server_url}/graphql", json=[{"query": "{ __typename }"}, {"query": "{ __typename }"}]
        )
    assert response.status_code == 400
    assert "Batching is not enabled" in response.text


async def test_limits_apply_to_subscriptions(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    sources = " ".join(
        f"s{n}: sources {{ text page score document {{ id filename }} }}" for n in range(7)
    )
    query = (
        'subscription { answer(question: "why?", k: 50) '
        f"{{ __typename ... on AnswerSources {{ {sources} }} }} }}"
    )
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        frame = json.loads(await ws.recv())
    assert frame["type"] == "error", frame
    (error,) = frame["payload"]
    assert error["extensions"]["code"] == "QUERY_TOO_COSTLY"
    assert ollama.embed_requests == 0 and ollama.chat_requests == 0


async def test_unexpected_errors_are_masked_with_the_request_id(
    gql: GraphQLClient,
    inbox: Inbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals: table xyz is on fire")

    monkeypatch.setattr(DocumentService, "list_page", broken)
    response = await gql.http.post(
        f"{gql.base_url}/graphql",
        json={"query": "{ documents { edges { node { id } } } }"},
        headers={"Authorization": f"Bearer {token}"},
    )
    body = response.json()
    (error,) = body["errors"]
    assert error["message"] == "Internal server error"
    extensions = error["extensions"]
    assert extensions["code"] == "INTERNAL_SERVER_ERROR"
    assert extensions["requestId"] == response.headers["x-request-id"]
    assert set(extensions) == {"code", "errorId", "requestId"}
    assert "fire" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if extensions["errorId"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert not isinstance(logged[0].exc_info[1], DomainError)


async def test_a_query_seen_again_is_not_checked_again_but_its_cost_is(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    """A query text that passed is reused without parsing or validating it again (the
    `CheckedDocuments` cache), yet its cost, which depends on its variables, is estimated
    each time; a text that failed is never kept."""
    token = await sign_up(gql, inbox, "ada@example.com")
    search = "search(query: $q, k: $k) { text page document { id filename } }"
    query = "query($q: String!, $k: Int!) { " + " ".join(f"s{n}: {search}" for n in range(8)) + " }"
    body = await gql.execute(query, {"q": "margins", "k": 5}, token=token)
    assert "errors" not in body, body
    embeds = ollama.embed_requests
    body = await gql.execute(query, {"q": "margins", "k": 50}, token=token)
    refused(body, "QUERY_TOO_COSTLY")  # 8 x 251, from the remembered document
    assert ollama.embed_requests == embeds
    body = await gql.execute(query, {"q": "margins", "k": 4}, token=token)
    assert "errors" not in body, body

    bad = "query($q: String!) { search(query: $q, k: 5) { nope } }"
    for _ in range(2):  # refused the second time as the first: it was not kept
        body = await gql.execute(bad, {"q": "x"}, token=token)
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", body


def test_checked_documents_keep_the_most_recently_used() -> None:
    checked = CheckedDocuments(maxsize=2)
    documents = {q: parse(q) for q in ("{ a }", "{ b }", "{ c }")}
    checked.add("{ a }", documents["{ a }"])
    checked.add("{ b }", documents["{ b }"])
    assert checked.get("{ a }") is documents["{ a }"]  # now the most recent
    checked.add("{ c }", documents["{ c }"])
    assert checked.get("{ b }") is None
    assert checked.get("{ a }") is documents["{ a }"]
    assert checked.get("{ c }") is documents["{ c }"]
