"""Tenant isolation: user B can neither see nor touch user A's documents.

Every operation of the schema is attacked in tests/test_attacks.py, whose schema walk
(`test_every_operation_has_an_attack_probe`) fails for an operation without an attack probe."""

from __future__ import annotations

import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from tests.support.accounts import LOGIN, PASSWORD, sign_up
from tests.support.graphql_client import GraphQLClient, Json, init, subscribe
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error, upload_ok

ME = "{ me { id email } }"
DOCUMENT = "query($id: ID!) { document(id: $id) { id filename } }"
DOCUMENTS = (
    "query($after: String) { documents(first: 100, after: $after) "
    "{ edges { cursor node { id filename } } pageInfo { hasNextPage endCursor } } }"
)
SEARCH = "query($q: String!) { search(query: $q, k: 50) { score text document { id } } }"
DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
ANSWER = """
subscription($q: String!) {
  answer(question: $q, k: 50) {
    __typename
    ... on AnswerSources { sources { text document { id filename } } }
    ... on AnswerToken { text }
    ... on AnswerError { code message }
  }
}
"""

SECRET_PAGES = [
    "Project Nightingale: the zeppelin hangar combination is amber walrus seventeen.",
    "Nightingale budget: forty thousand florins for helium and the walrus mascot.",
]
SECRET_TEXT = SECRET_PAGES[0]


async def answer_events(gql: GraphQLClient, token: str, question: str) -> list[Json]:
    """Runs the `answer` subscription as the owner of `token`; returns its events."""
    async with gql.websocket() as ws:
        ack = await init(ws, {"authorization": f"Bearer {token}"})
        assert ack["type"] == "connection_ack", ack
        events: list[Json] = []
        async for payload in subscribe(ws, ANSWER, {"q": question}):
            assert not payload.get("errors"), payload
            events.append(payload["data"]["answer"])
    return events


def source_ids(events: list[Json]) -> list[str]:
    assert events and events[0]["__typename"] == "AnswerSources", events
    assert events[-1]["__typename"] != "AnswerError", events
    return [source["document"]["id"] for source in events[0]["sources"]]


async def document_exists(settings: Settings, document_id: str) -> bool:
    async with connect(settings) as conn:
        found: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM document WHERE id = $1)", uuid.UUID(document_id)
        )
        return found


async def test_b_cannot_see_or_touch_a_documents(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token_a = await sign_up(gql, inbox, "alice@example.com")
    token_b = await sign_up(gql, inbox, "bob@example.com")
    secret = make_pdf(SECRET_PAGES)
    doc_a = await upload_ok(gql, "nightingale.pdf", secret, token_a)
    a_id = doc_a["id"]
    a_chunks = doc_a["chunkCount"]

    # me: B is B.
    me_b = (await gql.data(ME, token=token_b))["me"]
    assert me_b["email"] == "bob@example.com"
    assert me_b["id"] != (await gql.data(ME, token=token_a))["me"]["id"]

    # documents: empty for B, also when handed A's cursor.
    listed = await gql.data(DOCUMENTS, token=token_b)
    assert listed["documents"]["edges"] == []
    a_listing = await gql.data(DOCUMENTS, token=token_a)
    (a_edge,) = a_listing["documents"]["edges"]
    before_a = await gql.data(DOCUMENTS, {"after": a_edge["cursor"]}, token=token_b)
    assert before_a["documents"]["edges"] == []

    # document(id): A's id reads exactly like an id that does not exist.
    unknown = await gql.execute(DOCUMENT, {"id": str(uuid.uuid4())}, token=token_b)
    others = await gql.execute(DOCUMENT, {"id": a_id}, token=token_b)
    assert others["data"] is None
    assert assert_error(others, "NOT_FOUND") == assert_error(unknown, "NOT_FOUND")
    assert others["errors"][0]["extensions"] == unknown["errors"][0]["extensions"]

    # deleteDocument(id): the same NOT_FOUND, and A's document and chunks survive.
    unknown = await gql.execute(DELETE, {"id": str(uuid.uuid4())}, token=token_b)
    others = await gql.execute(DELETE, {"id": a_id}, token=token_b)
    assert others["data"] is None
    assert assert_error(others, "NOT_FOUND") == assert_error(unknown, "NOT_FOUND")
    assert await document_exists(settings, a_id)
    assert (await gql.data(DOCUMENT, {"id": a_id}, token=token_a))["document"]["id"] == a_id

    # search: A's exact words find nothing for B.
    assert (await gql.data(SEARCH, {"q": SECRET_TEXT}, token=token_b))["search"] == []

    # answer: no sources for B, and none of A's words reach the model's prompt.
    events = await answer_events(gql, token_b, SECRET_TEXT + " What is the combination?")
    assert source_ids(events) == []
    prompt = "\n".join(m["content"] for m in ollama.last_chat_messages)
    assert "amber walrus" in prompt  # B's own question, and only that
    assert "florins" not in prompt and "nightingale.pdf" not in prompt

    # uploadDocument: the same bytes make B's own copy, not a link to A's.
    own = await upload_ok(gql, "mine.pdf", make_pdf(["Bob's notes on walrus habitats."]), token_b)
    copy = await upload_ok(gql, "copy.pdf", secret, token_b)
    assert copy["duplicate"] is False
    assert copy["id"] != a_id
    assert copy["sha256"] == doc_a["sha256"]
    assert copy["filename"] == "copy.pdf"
    b_ids = {own["id"], copy["id"]}

    # Now B's reads see B's copy, never A's original.
    listed = await gql.data(DOCUMENTS, token=token_b)
    assert {e["node"]["id"] for e in listed["documents"]["edges"]} == b_ids
    hits = (await gql.data(SEARCH, {"q": SECRET_TEXT}, token=token_b))["search"]
    assert hits and hits[0]["document"]["id"] == copy["id"]
    assert {h["document"]["id"] for h in hits} <= b_ids
    events = await answer_events(gql, token_b, SECRET_TEXT)
    ids = source_ids(events)
    assert ids and ids[0] == copy["id"]
    assert set(ids) <= b_ids and a_id not in ids

    # And A still sees only A's: the listing, a search, B's ids.
    listed = await gql.data(DOCUMENTS, token=token_a)
    assert [e["node"]["id"] for e in listed["documents"]["edges"]] == [a_id]
    hits = (await gql.data(SEARCH, {"q": SECRET_TEXT}, token=token_a))["search"]
    assert {h["document"]["id"] for h in hits} == {a_id}
    assert len(hits) == a_chunks
    for b_id in b_ids:
        body = await gql.execute(DOCUMENT, {"id": b_id}, token=token_a)
        assert_error(body, "NOT_FOUND", "not found")

    # B deleting B's copy leaves A's original alone.
    assert await gql.data(DELETE, {"id": copy["id"]}, token=token_b) == {"deleteDocument": True}
    assert await document_exists(settings, a_id)
    async with connect(settings) as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM chunk WHERE document_id = $1", uuid.UUID(a_id)
        )
    assert left == a_chunks


async def test_anonymous_callers_reach_no_documents(gql: GraphQLClient, inbox: Inbox) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    doc = await upload_ok(gql, "nightingale.pdf", make_pdf(SECRET_PAGES), token)
    for query, variables in (
        (ME, {}),
        (DOCUMENT, {"id": doc["id"]}),
        (DOCUMENTS, {}),
        (SEARCH, {"q": SECRET_TEXT}),
        (DELETE, {"id": doc["id"]}),
    ):
        for bad_token in (None, "not-a-jwt"):
            body = await gql.execute(query, variables, token=bad_token)
            assert body["data"] is None
            assert_error(body, "UNAUTHENTICATED")
    assert (await gql.data(DOCUMENT, {"id": doc["id"]}, token=token))["document"]["id"]
    for payload in ({}, {"authorization": "Bearer not-a-jwt"}):
        async with gql.websocket() as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await init(ws, payload)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_change_password_touches_only_the_caller(gql: GraphQLClient, inbox: Inbox) -> None:
    token_a = await sign_up(gql, inbox, "alice@example.com")
    token_b = await sign_up(gql, inbox, "bob@example.com")
    change = (
        "mutation($c: String!, $n: String!) "
        "{ changePassword(currentPassword: $c, newPassword: $n) }"
    )
    variables = {"c": PASSWORD, "n": "purple velvet antelope"}
    assert await gql.data(change, variables, token=token_b) == {"changePassword": True}
    assert_error(await gql.execute(ME, token=token_b), "UNAUTHENTICATED")
    # A's session and password are untouched.
    assert (await gql.data(ME, token=token_a))["me"]["email"] == "alice@example.com"
    await gql.data(LOGIN, {"e": "alice@example.com", "p": PASSWORD})
