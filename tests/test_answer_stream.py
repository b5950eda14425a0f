"""Durable answers: a run that outlives its socket, and `answerStream`, which replays an
answer after a `seq` and follows the rest live, from another app on the same database (its
own services: its own runs, pool and `LISTEN` connection, as a second replica has)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from websockets.asyncio.client import ClientConnection

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect as sql

Json = dict[str, Any]

EVENT = """
    __typename
    ... on AnswerSources { seq messageId conversationId standaloneQuestion
                           sources { score text page document { id filename } } }
    ... on AnswerToken { seq text }
    ... on AnswerDone { seq messageId promptTokens completionTokens citations { number } }
    ... on AnswerError { seq code message }
"""
ANSWER = f"subscription($q: String!) {{ answer(question: $q) {{ {EVENT} }} }}"
STREAM = (
    "subscription($m: ID!, $after: Int) "
    f"{{ answerStream(messageId: $m, afterSeq: $after) {{ {EVENT} }} }}"
)
PAGES = ["Sourdough bread needs flour, water, salt and a lively starter."]
QUESTION = "What does sourdough bread need?"
WORDS = 40
REPLY = " ".join(f"w{i}" for i in range(WORDS))


async def _user(gql: GraphQLClient, inbox: Inbox, email: str = "ada@example.com") -> str:
    token = await sign_up(gql, inbox, email)
    body = (await gql.upload("notes.pdf", make_pdf(PAGES), token=token)).json()
    assert "errors" not in body, body
    return token


@asynccontextmanager
async def _socket(gql: GraphQLClient, token: str) -> AsyncIterator[ClientConnection]:
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        yield ws


async def _send(ws: ClientConnection, query: str, variables: Json, op_id: str = "1") -> None:
    payload = {"query": query, "variables": variables}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))


async def _next(ws: ClientConnection, op_id: str = "1", timeout: float = 15) -> Json:
    async with asyncio.timeout(timeout):
        while True:
            message: Json = json.loads(await ws.recv())
            if message.get("id") == op_id:
                return message


def _event(message: Json) -> Json:
    assert message["type"] == "next", message
    payload = message["payload"]
    assert not payload.get("errors"), payload
    data: Json = payload["data"]
    event: Json = data.get("answer") or data["answerStream"]
    return event


async def _rest(ws: ClientConnection, op_id: str = "1") -> list[Json]:
    """The events up to `complete` (asserted)."""
    got: list[Json] = []
    while True:
        message = await _next(ws, op_id)
        if message["type"] == "complete":
            return got
        got.append(_event(message))


async def _stream(gql: GraphQLClient, token: str, message_id: str, after: int = 0) -> list[Json]:
    async with _socket(gql, token) as ws:
        await _send(ws, STREAM, {"m": message_id, "after": after})
        return await _rest(ws)


async def _stored(settings: Settings, message_id: str) -> tuple[str, str]:
    async with sql(settings) as conn:
        row = await conn.fetchrow(
            "SELECT status, content FROM message WHERE id = $1", uuid.UUID(message_id)
        )
    assert row is not None
    return row["status"], row["content"]


async def _until_stored(settings: Settings, message_id: str) -> tuple[str, str]:
    async with asyncio.timeout(20):
        while True:
            status, content = await _stored(settings, message_id)
            if status != "streaming":
                return status, content
            await asyncio.sleep(0.1)


async def _drop_after_tokens(gql: GraphQLClient, token: str, tokens: int) -> list[Json]:
    """Starts an answer, reads its sources and `tokens` tokens, and drops the socket."""
    async with _socket(gql, token) as ws:
        await _send(ws, ANSWER, {"q": QUESTION})
        return [_event(await _next(ws)) for _ in range(1 + tokens)]


def _texts(events: list[Json]) -> str:
    return "".join(e["text"] for e in events if e["__typename"] == "AnswerToken")


async def test_a_dropped_answer_runs_on_and_another_replica_resumes_it(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await _user(gql, inbox)
    ollama.chat_reply = REPLY
    ollama.token_delay = 0.1
    first = await _drop_after_tokens(gql, token, 3)
    sources = first[0]
    assert sources["__typename"] == "AnswerSources"
    assert [e["seq"] for e in first] == [1, 2, 3, 4]
    message_id = sources["messageId"]
    assert (await _stored(settings, message_id))[0] == "streaming"

    # A second app on the same database.
    async with serve_client(settings) as other, _socket(other, token) as ws:
        await _send(ws, STREAM, {"m": message_id, "after": first[-1]["seq"]})
        head = _event(await _next(ws))
        # Live: the answer was still being written when the other replica sent this.
        assert (await _stored(settings, message_id))[0] == "streaming"
        rest = [head, *await _rest(ws)]
    assert [e["seq"] for e in rest] == list(range(5, 5 + len(rest)))
    assert [e["__typename"] for e in rest[:-1]] == ["AnswerToken"] * (len(rest) - 1)
    done = rest[-1]
    assert done["__typename"] == "AnswerDone" and done["messageId"] == message_id
    status, content = await _until_stored(settings, message_id)
    assert status == "complete"
    assert _texts(first) + _texts(rest) == content == REPLY

    # Finished: it replays whole, the same events the first stream had and the second got.
    ollama.token_delay = 0.0
    async with serve_client(settings) as other:
        whole = await _stream(other, token, message_id)
        middle = await _stream(other, token, message_id, after=10)
        past_the_end = await _stream(other, token, message_id, after=done["seq"])
    assert whole == first + rest
    assert middle == whole[10:]
    assert past_the_end == []
    # The conversation shows it complete.
    conversation = await gql.data(
        "query($id: ID!) { conversation(id: $id) { messages { id status content } } }",
        {"id": sources["conversationId"]},
        token=token,
    )
    assert conversation["conversation"]["messages"][-1] == {
        "id": message_id,
        "status": "complete",
        "content": REPLY,
    }


async def test_answer_stream_on_the_replica_that_runs_it(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await _user(gql, inbox)
    ollama.chat_reply = REPLY
    ollama.token_delay = 0.05
    async with _socket(gql, token) as ws:
        await _send(ws, ANSWER, {"q": QUESTION})
        sources = _event(await _next(ws))
        # A second follower from the start, on the same socket, while the first goes on.
        await _send(ws, STREAM, {"m": sources["messageId"], "after": 0}, op_id="2")
        got: dict[str, list[Json]] = {"1": [sources], "2": []}
        done: set[str] = set()
        async with asyncio.timeout(15):
            while done != {"1", "2"}:
                message: Json = json.loads(await ws.recv())
                if message["type"] == "complete":
                    done.add(message["id"])
                else:
                    got[message["id"]].append(_event(message))
        answered, followed = got["1"], got["2"]
    assert followed == answered
    assert _texts(followed) == REPLY


async def test_a_run_whose_client_left_holds_its_place_until_it_ends(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    async with serve_client(settings.model_copy(update={"max_answer_streams_per_user": 1})) as app:
        token = await _user(app, inbox)
        ollama.chat_reply = REPLY
        ollama.token_delay = 0.05
        first = await _drop_after_tokens(app, token, 1)
        async with _socket(app, token) as ws:
            await _send(ws, ANSWER, {"q": QUESTION})
            refused = await _next(ws)
            (error,) = refused["payload"]["errors"]
            assert error["extensions"]["code"] == "RATE_LIMITED", error
            # Once the first has ended, the place is free.
            assert (await _until_stored(settings, first[0]["messageId"]))[0] == "complete"
            ollama.token_delay = 0.0
            await asyncio.sleep(0.2)  # the run gives its place back right after storing
            await _send(ws, ANSWER, {"q": QUESTION}, op_id="2")
            assert (await _rest(ws, op_id="2"))[-1]["__typename"] == "AnswerDone"


async def test_with_continue_on_disconnect_off_a_dropped_answer_is_interrupted(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    update = {"answer_continue_on_disconnect": False}
    async with serve_client(settings.model_copy(update=update)) as app:
        token = await _user(app, inbox)
        ollama.chat_reply = REPLY
        ollama.token_delay = 0.1
        first = await _drop_after_tokens(app, token, 2)
        message_id = first[0]["messageId"]
        status, content = await _until_stored(settings, message_id)
        assert status == "interrupted"
        assert content.startswith(_texts(first)) and content != REPLY
        replay = await _stream(app, token, message_id)
    assert replay[: len(first)] == first
    assert _texts(replay) == content
    end = replay[-1]
    assert end["__typename"] == "AnswerError" and end["code"] == "INTERRUPTED", end
    assert end["seq"] == len(replay)


async def test_another_callers_answer_is_not_found_as_an_unknown_id(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    ada = await _user(gql, inbox)
    async with _socket(gql, ada) as ws:
        await _send(ws, ANSWER, {"q": QUESTION})
        message_id = _event(await _next(ws))["messageId"]
        await _rest(ws)
    bob = await sign_up(gql, inbox, "bob@example.com")

    async def error_of(token: str, message: str, after: int = 0) -> Json:
        async with _socket(gql, token) as ws:
            await _send(ws, STREAM, {"m": message, "after": after})
            reply = await _next(ws)
            assert reply["type"] == "next" and reply["payload"]["data"] is None, reply
            assert (await _next(ws))["type"] == "complete"
            (error,) = reply["payload"]["errors"]
            assert "Traceback" not in json.dumps(error)
            return {"message": error["message"], "code": error["extensions"]["code"]}

    theirs = await error_of(bob, message_id)
    assert theirs == {"message": "Answer not found", "code": "NOT_FOUND"}
    assert theirs == await error_of(bob, str(uuid.uuid4()))
    assert theirs == await error_of(bob, "not-an-id")
    # A question's id is not an answer's.
    async with sql(settings) as conn:
        question_id = await conn.fetchval("SELECT id FROM message WHERE role = 'user'")
    assert theirs == await error_of(ada, str(question_id))
    bad = await error_of(ada, message_id, after=-1)
    assert bad["code"] == "BAD_USER_INPUT"
    # Ada's own answer replays.
    assert (await _stream(gql, ada, message_id))[-1]["__typename"] == "AnswerDone"


async def test_an_answer_past_answer_max_seconds_stops_interrupted(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    async with serve_client(settings.model_copy(update={"answer_max_seconds": 1.0})) as app:
        token = await _user(app, inbox)
        ollama.chat_reply = REPLY
        ollama.token_delay = 0.1  # 4 s of tokens
        async with _socket(app, token) as ws:
            await _send(ws, ANSWER, {"q": QUESTION})
            got = await _rest(ws)
    end = got[-1]
    assert end["__typename"] == "AnswerError" and end["code"] == "INTERRUPTED", end
    assert "ANSWER_MAX_SECONDS" in end["message"]
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))
    status, content = await _stored(settings, got[0]["messageId"])
    assert (status, content) == ("interrupted", _texts(got))


async def test_an_answer_left_streaming_by_a_dead_process_is_swept_interrupted(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    token = await _user(gql, inbox)
    ollama.chat_reply = REPLY
    answers = []
    for _ in range(2):
        async with _socket(gql, token) as ws:
            await _send(ws, ANSWER, {"q": QUESTION})
            answers.append(await _rest(ws))
    lost, recent = (events[0]["messageId"] for events in answers)
    # As a process killed (kill -9) after storing its last tokens leaves its answers: still
    # `streaming`, without their end; one started a day ago, one 5 minutes ago.
    async with sql(settings) as conn:
        for message_id, age in ((lost, timedelta(days=1)), (recent, timedelta(minutes=5))):
            await conn.execute(
                "UPDATE message SET status = 'streaming', created_at = now() - $2::interval"
                " WHERE id = $1",
                uuid.UUID(message_id),
                age,
            )
            await conn.execute(
                "DELETE FROM answer_event WHERE message_id = $1 AND kind = 'done'",
                uuid.UUID(message_id),
            )
    # Another API process starts: it sweeps at once.
    async with serve_client(settings) as other:
        status, content = await _until_stored(settings, lost)
        replay = await _stream(other, token, lost)
    assert (status, content) == ("interrupted", REPLY)
    # The same events, but the live stream sent the tokens that came together as one.
    assert replay[0] == answers[0][0]
    assert _texts(replay) == _texts(answers[0]) == REPLY
    end = replay[-1]
    assert (end["__typename"], end["code"], end["seq"]) == (
        "AnswerError",
        "INTERRUPTED",
        answers[0][-1]["seq"],
    ), end
    # Younger than ANSWER_MAX_SECONDS + the margin: its run may still be writing it.
    assert (await _stored(settings, recent))[0] == "streaming"
    conversation = await gql.data(
        "query($id: ID!) { conversation(id: $id) { messages { role status content } } }",
        {"id": answers[0][0]["conversationId"]},
        token=token,
    )
    (answer,) = [m for m in conversation["conversation"]["messages"] if m["role"] == "assistant"]
    assert answer == {"role": "assistant", "status": "interrupted", "content": REPLY}
