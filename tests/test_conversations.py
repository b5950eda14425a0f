"""Cited answers, `ask`, conversations with follow-ups, and what is stored."""

from __future__ import annotations

import asyncio
import json
import uuid

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error

ANSWER = """
subscription($q: String!, $c: ID) {
  answer(question: $q, k: 3, conversationId: $c) {
    __typename
    ... on AnswerSources { conversationId standaloneQuestion sources { page document { id } } }
    ... on AnswerToken { text }
    ... on AnswerDone {
      messageId grounded promptTokens completionTokens
      citations { number documentId filename page charStart charEnd document { id filename } }
    }
    ... on AnswerError { code message }
  }
}
"""
ASK = """
mutation($q: String!, $c: ID) {
  ask(question: $q, k: 3, conversationId: $c) {
    text conversationId messageId standaloneQuestion grounded
    sources { page document { filename } }
    citations { number filename page }
    usage { promptTokens completionTokens totalMs }
    error { code message }
  }
}
"""
CONVERSATION = """
query($id: ID!) {
  conversation(id: $id) {
    id title
    messages { role content status standaloneQuestion citations { number page } sources { number }
               promptTokens completionTokens totalMs }
  }
}
"""
CITED = """
query($id: ID!) {
  conversation(id: $id) {
    messages {
      citations { number documentId document { id filename status } }
      sources { number documentId document { id filename } }
    }
  }
}
"""
CONVERSATION_PAGE = """
query($after: String) {
  conversations(first: 1, after: $after) {
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
PAGES = [
    "The lighthouse keeper lights the lamp at dusk and trims the wick every four hours.",
    "Tide tables are printed every spring; the harbour master posts them by the quay.",
]


async def answer(
    gql: GraphQLClient, token: str, question: str, conversation: str | None = None
) -> list[Json]:
    """Runs the subscription to its end; returns the `answer` events."""
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        payload = {"query": ANSWER, "variables": {"q": question, "c": conversation}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        events: list[Json] = []
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "complete":
                return events
            assert frame["type"] == "next", frame
            if frame["payload"].get("errors"):
                return [{"__typename": "errors", "errors": frame["payload"]["errors"]}]
            events.append(frame["payload"]["data"]["answer"])


async def test_answers_cite_and_are_stored(gql: GraphQLClient, inbox: Inbox) -> None:
    token = await sign_up(gql, inbox, "keeper@example.com")
    doc = (await gql.upload("lighthouse.pdf", make_pdf(PAGES), token=token)).json()
    doc_id = doc["data"]["uploadDocument"]["id"]

    events = await answer(gql, token, "When does the keeper light the lamp?")
    sources, done = events[0], events[-1]
    assert sources["__typename"] == "AnswerSources" and done["__typename"] == "AnswerDone"
    assert sources["standaloneQuestion"] == "When does the keeper light the lamp?"
    assert done["grounded"] is True
    (citation,) = done["citations"]
    assert citation["number"] == 1
    assert (citation["documentId"], citation["filename"], citation["page"]) == (
        doc_id,
        "lighthouse.pdf",
        1,
    )
    assert citation["charEnd"] > citation["charStart"] == 0
    assert citation["document"] == {"id": doc_id, "filename": "lighthouse.pdf"}
    text = "".join(e["text"] for e in events if e["__typename"] == "AnswerToken")

    stored = await gql.data(CONVERSATION, {"id": sources["conversationId"]}, token=token)
    conversation = stored["conversation"]
    assert conversation["title"] == "When does the keeper light the lamp?"
    question, reply = conversation["messages"]
    assert (question["role"], question["content"]) == (
        "user",
        "When does the keeper light the lamp?",
    )
    assert (reply["role"], reply["content"], reply["status"]) == ("assistant", text, "complete")
    assert reply["citations"] == [{"number": 1, "page": 1}]
    assert [s["number"] for s in reply["sources"]] == [1, 2]
    assert reply["completionTokens"] == done["completionTokens"] and reply["totalMs"] > 0


async def test_a_citation_resolves_its_document_until_it_is_deleted(
    gql: GraphQLClient, inbox: Inbox
) -> None:
    token = await sign_up(gql, inbox, "cited@example.com")
    doc = (await gql.upload("lighthouse.pdf", make_pdf(PAGES), token=token)).json()
    doc_id = doc["data"]["uploadDocument"]["id"]
    asked = (await gql.data(ASK, {"q": "When is the lamp lit?", "c": None}, token=token))["ask"]
    conversation = asked["conversationId"]

    _, reply = (await gql.data(CITED, {"id": conversation}, token=token))["conversation"][
        "messages"
    ]
    cited = {"id": doc_id, "filename": "lighthouse.pdf", "status": "READY"}
    assert reply["citations"] == [{"number": 1, "documentId": doc_id, "document": cited}]
    assert [s["document"] for s in reply["sources"]] == [
        {"id": doc_id, "filename": "lighthouse.pdf"}
    ] * len(reply["sources"])

    # The stored conversation outlives the document: its citations keep their ids.
    delete = "mutation($id: ID!) { deleteDocument(id: $id) }"
    assert (await gql.data(delete, {"id": doc_id}, token=token))["deleteDocument"] is True
    _, reply = (await gql.data(CITED, {"id": conversation}, token=token))["conversation"][
        "messages"
    ]
    assert reply["citations"] == [{"number": 1, "documentId": doc_id, "document": None}]


async def test_conversations_page_info(gql: GraphQLClient, inbox: Inbox) -> None:
    token = await sign_up(gql, inbox, "pages@example.com")
    await gql.upload("lighthouse.pdf", make_pdf(PAGES), token=token)
    questions = ("When is the lamp lit?", "Where are the tide tables?", "Who trims the wick?")
    asked = [(await gql.data(ASK, {"q": q, "c": None}, token=token))["ask"] for q in questions]

    # One a page, most recent first: before the cursor of the page before, items exist only
    # from the third page on (the first page's conversation precedes the second's).
    after: str | None = None
    for n, conversation in enumerate(reversed(asked)):
        page = (await gql.data(CONVERSATION_PAGE, {"after": after}, token=token))["conversations"]
        (edge,) = page["edges"]
        assert edge["node"]["id"] == conversation["conversationId"]
        assert page["pageInfo"] == {
            "hasNextPage": n < 2,
            "hasPreviousPage": n == 2,
            "startCursor": edge["cursor"],
            "endCursor": edge["cursor"],
        }
        after = edge["cursor"]


async def test_an_answer_that_cites_nothing_is_not_grounded(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "loose@example.com")
    await gql.upload("lighthouse.pdf", make_pdf(PAGES), token=token)
    ollama.chat_reply = "The lamp is lit at dusk, and also [7] at dawn."
    done = (await answer(gql, token, "When is the lamp lit?"))[-1]
    assert done["grounded"] is False
    assert done["citations"] == [], "[7] is not one of the 2 sources"


async def test_follow_ups_are_rewritten_and_keep_history(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "tides@example.com")
    await gql.upload("harbour.pdf", make_pdf(PAGES), token=token)
    first = await answer(gql, token, "Who posts the tide tables?")
    conversation = first[0]["conversationId"]
    first_text = "".join(e["text"] for e in first if e["__typename"] == "AnswerToken")

    follow = await answer(gql, token, "And when are they printed?", conversation)
    sources = follow[0]
    assert sources["conversationId"] == conversation
    # The stand-in "rewrites" by completing the follow-up with the conversation's question.
    assert (
        sources["standaloneQuestion"] == "And when are they printed? (Who posts the tide tables?)"
    )
    roles = [m["role"] for m in ollama.last_chat_messages]
    assert roles == ["system", "user", "assistant", "user"], (
        "history sits between system and question"
    )
    assert ollama.last_chat_messages[2]["content"] == first_text

    via_ask = await gql.data(ASK, {"q": "Where are they posted?", "c": conversation}, token=token)
    result = via_ask["ask"]
    assert result["conversationId"] == conversation
    assert result["grounded"] is True and result["citations"][0]["number"] == 1
    assert result["usage"]["completionTokens"] > 0 and result["error"] is None
    assert result["text"].endswith("[1].")
    stored = await gql.data(CONVERSATION, {"id": conversation}, token=token)
    messages = stored["conversation"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[3]["standaloneQuestion"] == sources["standaloneQuestion"]
    listed = await gql.data("{ conversations { edges { node { id title } } } }", token=token)
    assert [e["node"]["id"] for e in listed["conversations"]["edges"]] == [conversation]
    # The list gives each conversation's messages too, when asked for (through a fragment).
    listed = await gql.data(
        "{ conversations { edges { node { ...M } } } } "
        "fragment M on Conversation { messages { role content } }",
        token=token,
    )
    (edge,) = listed["conversations"]["edges"]
    assert edge["node"]["messages"] == [
        {"role": m["role"], "content": m["content"]} for m in messages
    ]


async def test_a_client_leaving_mid_answer_leaves_it_interrupted(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    """With ANSWER_CONTINUE_ON_DISCONNECT=false (by default the answer runs on:
    tests/test_answer_stream.py)."""
    update = {"answer_continue_on_disconnect": False}
    async with serve_client(settings.model_copy(update=update)) as gql:
        await _leave_mid_answer(gql, inbox, ollama, settings)


async def _leave_mid_answer(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "leaver@example.com")
    await gql.upload("lighthouse.pdf", make_pdf(PAGES), token=token)
    ollama.chat_reply = "one two three four five six seven eight nine ten"
    ollama.token_delay = 0.2
    async with gql.websocket() as ws:
        await init(ws, {"authorization": f"Bearer {token}"})
        payload = {"query": ANSWER, "variables": {"q": "lamp?", "c": None}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        tokens = 0
        while tokens < 2:
            frame = json.loads(await ws.recv())
            if frame["payload"]["data"]["answer"]["__typename"] == "AnswerToken":
                tokens += 1
    # The server notices the closed socket and stores what was streamed.
    for _ in range(100):
        async with connect(settings) as conn:
            row = await conn.fetchrow(
                "SELECT status, content FROM message WHERE role = 'assistant'"
            )
        if row is not None and row["status"] != "streaming":  # stored while it streams
            break
        await asyncio.sleep(0.05)
    assert row is not None
    assert row["status"] == "interrupted"
    assert row["content"].startswith("one two") and "ten" not in row["content"]


async def test_conversations_are_private(gql: GraphQLClient, inbox: Inbox) -> None:
    alice = await sign_up(gql, inbox, "alice@example.com")
    bob = await sign_up(gql, inbox, "bob@example.com")
    await gql.upload("lighthouse.pdf", make_pdf(PAGES), token=alice)
    mine = (await gql.data(ASK, {"q": "When is the lamp lit?", "c": None}, token=alice))["ask"]
    conversation = mine["conversationId"]
    unknown = str(uuid.uuid4())

    def same_not_found(body: Json, other: Json) -> None:
        assert assert_error(body, "NOT_FOUND", "Conversation not found") == assert_error(
            other, "NOT_FOUND"
        )

    same_not_found(
        await gql.execute(CONVERSATION, {"id": conversation}, token=bob),
        await gql.execute(CONVERSATION, {"id": unknown}, token=bob),
    )
    same_not_found(
        await gql.execute(ASK, {"q": "and then?", "c": conversation}, token=bob),
        await gql.execute(ASK, {"q": "and then?", "c": unknown}, token=bob),
    )
    events = await answer(gql, bob, "and then?", conversation)
    assert_error({"errors": events[0]["errors"]}, "NOT_FOUND", "Conversation not found")
    delete = "mutation($id: ID!) { deleteConversation(id: $id) }"
    same_not_found(
        await gql.execute(delete, {"id": conversation}, token=bob),
        await gql.execute(delete, {"id": unknown}, token=bob),
    )
    assert (await gql.data("{ conversations { edges { node { id } } } }", token=bob))[
        "conversations"
    ]["edges"] == []
    # Still Alice's, until she deletes it.
    assert (await gql.data(CONVERSATION, {"id": conversation}, token=alice))["conversation"]
    assert (await gql.data(delete, {"id": conversation}, token=alice))["deleteConversation"]
    assert_error(await gql.execute(CONVERSATION, {"id": conversation}, token=alice), "NOT_FOUND")


ASK_K = """
mutation($q: String!, $k: Int, $c: ID, $f: SearchFilter) {
  ask(question: $q, k: $k, conversationId: $c, filter: $f) { text conversationId }
}
"""
SEARCH_K = "query($q: String!, $k: Int) { search(query: $q, k: $k) { text } }"


async def test_search_and_ask_check_one_request_alike(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    """`search` and `ask` share one request and its one check: the same bad `k` or empty
    query is refused with the same message, before Ollama is called and before a
    conversation is stored; a malformed `conversationId` is "not found"."""
    token = await sign_up(gql, inbox, "ada@example.com")
    too_many = settings.search_max_k + 1
    for k, fragment in ((0, "k must be between 1 and"), (too_many, f"and {too_many - 1}")):
        searched = await gql.execute(SEARCH_K, {"q": "bread", "k": k}, token=token)
        asked = await gql.execute(ASK_K, {"q": "bread?", "k": k}, token=token)
        assert assert_error(searched, "BAD_USER_INPUT", fragment) == assert_error(
            asked, "BAD_USER_INPUT", fragment
        )
    asked = await gql.execute(ASK_K, {"q": "  "}, token=token)
    assert_error(asked, "BAD_USER_INPUT", "question is empty")
    asked = await gql.execute(ASK_K, {"q": "bread?", "c": "not-an-id"}, token=token)
    assert_error(asked, "NOT_FOUND", "Conversation not found")
    assert ollama.embed_requests == 0
    assert ollama.chat_requests == 0
    listed = await gql.data("{ conversations { edges { node { id } } } }", token=token)
    assert listed["conversations"]["edges"] == [], "a refused question stores nothing"
