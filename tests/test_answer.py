"""The `answer` subscription: sources, then tokens as the model streams them, then done."""

from __future__ import annotations

import itertools
import json
import re
import statistics

from websockets.asyncio.client import ClientConnection

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.answers import (
    answer_frames,
    events,
    kinds,
    next_frame,
    rest_of_answer,
    start_answer,
)
from tests.support.graphql_client import GraphQLClient, init
from tests.support.ollama_standin import NOT_FOUND_REPLY, StandinState, split_tokens
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect as sql

PAGES = [
    "PostgreSQL keeps embedding vectors in pgvector columns.",
    "Sourdough bread needs flour, water, salt and a lively starter.",
    "The lighthouse keeper counts ships passing the northern reef.",
]
BREAD_QUESTION = "What does sourdough bread need?"
SOURCE_LINE = re.compile(r"^\[(\d+)\] ", re.MULTILINE)  # a numbered source in the prompt


async def _user_with_notes(gql: GraphQLClient, inbox: Inbox, email: str) -> tuple[str, str]:
    """Signs up `email` and uploads notes.pdf (PAGES); returns the token and document id."""
    token = await sign_up(gql, inbox, email)
    response = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)
    body = response.json()
    assert "errors" not in body, body
    assert body["data"]["uploadDocument"]["chunkCount"] == len(PAGES)
    document_id: str = body["data"]["uploadDocument"]["id"]
    return token, document_id


async def _authenticated(ws: ClientConnection, token: str) -> None:
    reply = await init(ws, {"authorization": f"Bearer {token}"})
    assert reply["type"] == "connection_ack", reply


def _tokens(answer_events: list[dict[str, object]]) -> list[str]:
    return [str(e["text"]) for e in answer_events if e["__typename"] == "AnswerToken"]


async def test_answer_streams_sources_then_tokens_then_done(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, document_id = await _user_with_notes(gql, inbox, "ada@example.com")
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        got = events(await answer_frames(ws, BREAD_QUESTION, k=3))

    names = kinds(got)
    assert names[0] == "AnswerSources"
    assert names.count("AnswerSources") == 1
    assert names[-1] == "AnswerDone"
    assert names.count("AnswerDone") == 1
    assert names[1:-1] == ["AnswerToken"] * (len(names) - 2)
    assert len(names) - 2 >= 1  # instant tokens arrive together: a few events carry them

    sources = got[0]["sources"]
    assert len(sources) == 3
    assert sources[0]["page"] == 2
    assert sources[0]["document"] == {"id": document_id, "filename": "notes.pdf"}
    assert " ".join(sources[0]["text"].split()) == PAGES[1]
    scores = [s["score"] for s in sources]
    assert scores == sorted(scores, reverse=True)

    text = "".join(_tokens(got))
    # The stand-in quotes source [1] and cites it: the answer is grounded in page 2.
    assert text.startswith("According to the sources,"), text
    assert PAGES[1].rstrip(".") in " ".join(text.split()), text
    assert text.endswith("[1].")

    done = got[-1]
    assert done["promptTokens"] > 0
    assert done["completionTokens"] == len(split_tokens(text))  # Ollama's eval_count
    assert 0 < done["timeToFirstTokenMs"] <= done["totalMs"]
    assert ollama.chat_requests == 1


async def test_tokens_are_relayed_as_they_arrive(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
    reply = "Bread needs a lively starter [1]."
    expected = split_tokens(reply)
    n = len(expected)
    assert n >= 6
    ollama.chat_reply = reply
    ollama.token_delay = 0.2

    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        frames = await answer_frames(ws, BREAD_QUESTION)

    got = events(frames)
    timed = list(zip(frames[:-1], got, strict=True))
    token_times = [f.at for f, e in timed if e["__typename"] == "AnswerToken"]
    done_at = next(f.at for f, e in timed if e["__typename"] == "AnswerDone")
    assert _tokens(got) == expected
    assert "".join(_tokens(got)) == reply
    # Each token reaches the client about token_delay after the previous one: nothing is
    # held back until the model finishes.
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    assert 0.1 < statistics.median(gaps) < 0.5, gaps
    assert token_times[0] < done_at - (n - 2) * 0.1, (token_times, done_at)
    done = got[-1]
    assert done["timeToFirstTokenMs"] < done["totalMs"] - (n - 2) * 100, done


async def test_prompt_is_grounded_in_numbered_sources(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
    question = "  What does sourdough bread need?  "
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        got = events(await answer_frames(ws, question, k=2))

    sources = got[0]["sources"]
    assert len(sources) == 2
    messages = ollama.last_chat_messages
    assert [m["role"] for m in messages] == ["system", "user"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert user == question.strip()
    assert "only" in system.lower()
    assert "sources" in system.lower()
    # Each source is numbered in the order the client got them, with its text.
    positions = []
    for number, source in enumerate(sources, start=1):
        marker = system.index(f"[{number}] notes.pdf, page {source['page']}")
        assert system.index(" ".join(source["text"].split()), marker) > marker
        positions.append(marker)
    assert positions == sorted(positions)
    assert SOURCE_LINE.findall(system) == ["1", "2"]
    assert PAGES[1] in system


async def test_no_documents_gives_empty_sources_and_a_not_found_answer(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    # Someone else's documents are not sources: the workspaces are separate.
    await _user_with_notes(gql, inbox, "ada@example.com")
    token = await sign_up(gql, inbox, "bob@example.com")
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        got = events(await answer_frames(ws, BREAD_QUESTION))

    assert got[0] == {"__typename": "AnswerSources", "sources": []}
    assert kinds(got)[-1] == "AnswerDone"
    assert "".join(_tokens(got)) == NOT_FOUND_REPLY
    assert SOURCE_LINE.findall(ollama.last_chat_messages[0]["content"]) == []


async def test_bad_input_is_a_graphql_error_before_any_event(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    cases = [("", 5), ("   ", 5), (BREAD_QUESTION, 0), (BREAD_QUESTION, 51)]
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        for i, (question, k) in enumerate(cases):
            frames = await answer_frames(ws, question, k, op_id=f"bad-{i}")
            assert [f.type for f in frames] == ["next", "complete"], frames
            payload = frames[0].message["payload"]
            assert payload["data"] is None
            (error,) = payload["errors"]
            assert error["extensions"]["code"] == "BAD_USER_INPUT", error
            assert error["message"]
    assert ollama.embed_requests == 0
    assert ollama.chat_requests == 0


async def test_ollama_error_before_sources_is_a_typed_graphql_error(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
    ollama.fail_status = 500
    ollama.fail_message = "model crashed"
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        # The question is embedded first, so the failure comes before any event: the
        # subscription answers one `next` with errors (no data) and completes.
        frames = await answer_frames(ws, BREAD_QUESTION)
        assert [f.type for f in frames] == ["next", "complete"], frames
        payload = frames[0].message["payload"]
        assert payload["data"] is None
        (error,) = payload["errors"]
        assert error["extensions"] == {"code": "UPSTREAM_ERROR"}
        assert "model crashed" in error["message"]
        assert "Traceback" not in frames[0].raw
        assert ollama.chat_requests == 0

        # The same socket works again once Ollama does.
        ollama.fail_status = None
        assert kinds(events(await answer_frames(ws, BREAD_QUESTION, op_id="2")))[-1] == "AnswerDone"


async def test_ollama_error_after_sources_is_an_answer_error_event(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
    # Every Ollama request waits 0.3 s: time to make the chat request (not the embedding) fail.
    ollama.delay = 0.3
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        started = await start_answer(ws, BREAD_QUESTION)
        first = await next_frame(ws, started)
        assert first.event["__typename"] == "AnswerSources"
        ollama.fail_status = 500
        ollama.fail_message = "model crashed"
        ollama.fail_times = 1
        rest = await rest_of_answer(ws, started)

    got = events(rest)
    assert got == [
        {
            "__typename": "AnswerError",
            "code": "UPSTREAM_ERROR",
            "message": "Ollama error (500): model crashed",
        }
    ]
    assert ollama.chat_requests == 1
    assert ollama.fail_status is None  # the failure was the chat request's


async def test_dropped_stream_ends_with_an_error_event_and_the_socket_stays_usable(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
    ollama.die_after_tokens = 3
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        got = events(await answer_frames(ws, BREAD_QUESTION))
        names = kinds(got)
        assert names[0] == "AnswerSources" and names[-1] == "AnswerError", names
        assert set(names[1:-1]) == {"AnswerToken"}, names  # 3 tokens, in one event or more
        assert len(split_tokens("".join(_tokens(got)))) == 3
        assert got[-1]["code"] == "UPSTREAM_UNAVAILABLE"
        assert got[-1]["message"]
        assert "Traceback" not in got[-1]["message"]

        ollama.die_after_tokens = None
        again = events(await answer_frames(ws, BREAD_QUESTION, op_id="2"))
        assert kinds(again)[0] == "AnswerSources"
        assert kinds(again)[-1] == "AnswerDone"


async def test_client_leaving_mid_stream_does_not_hurt_the_server(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
    ollama.chat_reply = " ".join(["word"] * 30)
    ollama.token_delay = 0.2

    # The client stops the operation with `complete`; the socket carries on.
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        started = await start_answer(ws, BREAD_QUESTION, op_id="stop-me")
        for _ in range(3):  # sources and two tokens
            frame = await next_frame(ws, started, op_id="stop-me")
            assert frame.type == "next"
        await ws.send(json.dumps({"id": "stop-me", "type": "complete"}))
        ollama.token_delay = 0.0
        ollama.chat_reply = None
        got = events(await answer_frames(ws, BREAD_QUESTION, op_id="after-stop"))
        assert kinds(got)[-1] == "AnswerDone"

    # The client just goes away in the middle of a stream.
    ollama.chat_reply = " ".join(["word"] * 30)
    ollama.token_delay = 0.2
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        started = await start_answer(ws, BREAD_QUESTION)
        for _ in range(3):
            assert (await next_frame(ws, started)).type == "next"

    ollama.token_delay = 0.0
    ollama.chat_reply = None
    me = await gql.data("{ me { email } }", token=token)
    assert me["me"]["email"] == "ada@example.com"
    async with gql.websocket() as ws:
        await _authenticated(ws, token)
        got = events(await answer_frames(ws, BREAD_QUESTION))
        assert kinds(got)[0] == "AnswerSources"
        assert kinds(got)[-1] == "AnswerDone"


async def test_revoking_the_api_key_ends_a_streaming_answer(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    """The answer stops with an AnswerError once its key is revoked, and what was streamed
    is stored as interrupted."""
    settings = settings.model_copy(update={"subscription_reauth_seconds": 0.2})
    async with serve_client(settings) as gql:
        token, _ = await _user_with_notes(gql, inbox, "ada@example.com")
        workspaces = (await gql.data("{ workspaces { id } }", token=token))["workspaces"]
        created = (
            await gql.data(
                'mutation($w: ID!) { createApiKey(workspaceId: $w, name: "bot", role: VIEWER) '
                "{ secret apiKey { id } } }",
                {"w": workspaces[0]["id"]},
                token=token,
            )
        )["createApiKey"]
        ollama.chat_reply = " ".join(["word"] * 200)
        ollama.token_delay = 0.05
        async with gql.websocket() as ws:
            assert (await init(ws, {"apiKey": created["secret"]}))["type"] == "connection_ack"
            started = await start_answer(ws, BREAD_QUESTION)
            for _ in range(3):  # sources and two tokens
                assert (await next_frame(ws, started)).type == "next"
            await gql.data(
                "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
                {"id": created["apiKey"]["id"]},
                token=token,
            )
            rest = events(await rest_of_answer(ws, started, timeout=10))
        assert kinds(rest)[-1] == "AnswerError", kinds(rest)
        assert rest[-1]["code"] == "UNAUTHENTICATED", rest[-1]
        assert len(_tokens(rest)) < 200
        async with sql(settings) as conn:
            row = await conn.fetchrow("SELECT status FROM message WHERE role = 'assistant'")
        assert row is not None and row["status"] == "interrupted", row
