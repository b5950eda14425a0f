"""A deployment of several replicas, with real processes: two `rag-gql serve`
(`WORKER_IN_PROCESS=false`) and a `rag-gql worker` on one PostgreSQL (the test's embedded
server, reached by `DATABASE_URL`) and one `redis-server` (`RATE_LIMIT_STORAGE_URI`).

What a user sees through either replica is one service: an upload through A is followed to
READY on B; the rate limits and the caps on what runs at once count both replicas together;
SIGTERM on A in the middle of an answer leaves B serving and the answer stored whole as
`interrupted`; `kill -9` on the worker in the middle of a document, then another worker: the
document completes once, each chunk once. An answer whose socket on A drops is resumed by
`answerStream` on B, live; SIGTERM on A while B follows two answers with `answerStream`: the
one that ends within the grace ends `AnswerDone` on B, the other `AnswerError INTERRUPTED`,
each stored as B received it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from rag_gql.ingestion.queue import RECOVER_TASK
from tests.support.accounts import sign_up
from tests.support.answers import (
    ANSWER_STREAM,
    SEQUENCED_ANSWER,
    Follower,
    answer_event,
    next_frame,
    start_answer,
    token_text,
)
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import long_page, make_pdf
from tests.support.redis import redis_server
from tests.support.replicas import START_TIMEOUT, Child, child, log_text, replica
from tests.support.serving import SMALL_STEPS, environment, free_port
from tests.support.smtp import Inbox
from tests.support.sql import connect

EVENTS = "subscription { documentEvents { documentId status error deleted } }"
SEARCH = 'query { search(query: "kestrel", k: 3) { page } }'
SEARCHES_PER_MINUTE = 4
PAGES = 12
LONG_REPLY = " ".join(f"word{n}" for n in range(400)) + " [1]."
"""A chat reply of ~400 tokens: at 0.05 s a token, an answer runs for ~20 s."""


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    folder = tmp_path / "redis"
    folder.mkdir()
    with redis_server(folder) as url:
        yield url


def replica_env(settings: Settings, redis_url: str) -> dict[str, str]:
    return environment(
        settings,
        WORKER_IN_PROCESS="false",
        RATE_LIMIT_STORAGE_URI=redis_url,
        RATE_LIMIT_SEARCH_PER_USER=f"{SEARCHES_PER_MINUTE}/minute",
        MAX_ANSWER_STREAMS_PER_USER="1",
        MAX_WEBSOCKETS_PER_USER="2",
        WS_MAX_OPERATIONS_PER_USER="2",
        SHARED_SLOTS_LEASE_TTL="3",
        SHUTDOWN_GRACE="1",
        **SMALL_STEPS,
    )


def ws_url(server: Child) -> str:
    assert server.url is not None
    return server.url.replace("http://", "ws://") + "/graphql"


async def until_event(ws: ClientConnection, document_id: str, status: str) -> list[str]:
    """The statuses `documentEvents` (operation "1") reports for `document_id` up to
    `status`."""
    seen: list[str] = []
    async with asyncio.timeout(START_TIMEOUT):
        while not seen or seen[-1] != status:
            message: Json = json.loads(await ws.recv())
            assert message["type"] == "next", message
            event = message["payload"]["data"]["documentEvents"]
            if event["documentId"] == document_id:
                seen.append(event["status"])
    return seen


async def answer_error(ws: ClientConnection, op_id: str) -> Json:
    """The error that refuses the `answer` subscription `op_id` (its only result, then
    `complete`)."""
    started = await start_answer(ws, "What do the kestrels do?", op_id=op_id)
    frame = await next_frame(ws, started, op_id, timeout=20)
    assert frame.type == "next", frame.message
    assert frame.message["payload"]["data"] is None, frame.message
    (error,) = frame.message["payload"]["errors"]
    assert (await next_frame(ws, started, op_id)).type == "complete"
    return dict(error)


async def answer_text(ws: ClientConnection, op_id: str) -> tuple[str, str]:
    """Runs an answer to its end on `ws`: (the streamed text, the last event's type)."""
    started = await start_answer(ws, "What do the kestrels do?", op_id=op_id)
    text: list[str] = []
    while True:
        frame = await next_frame(ws, started, op_id, timeout=30)
        if frame.type != "next":
            raise AssertionError(frame.message)
        event = frame.event
        if event["__typename"] == "AnswerToken":
            text.append(event["text"])
        elif event["__typename"] in ("AnswerDone", "AnswerError"):
            assert (await next_frame(ws, started, op_id)).type == "complete"
            return "".join(text), str(event["__typename"])


async def document_state(conn: asyncpg.Connection, document_id: str) -> tuple[str, int, int]:
    """(status, pages_done, visible chunks) of the document, in one snapshot."""
    row = await conn.fetchrow(
        "SELECT status, pages_done, (SELECT count(*) FROM chunk WHERE document_id = $1) AS n "
        "FROM document WHERE id = $1",
        document_id,
    )
    assert row is not None
    return row["status"], row["pages_done"], row["n"]


async def test_two_replicas_and_a_worker_act_as_one_service(
    inbox: Inbox, ollama: StandinState, settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    env = replica_env(settings, redis_url)
    log = tmp_path / "processes.log"
    auth = {"authorization": ""}
    async with (
        replica(env, log, free_port()) as a,
        replica(env, log, free_port()) as b,
        child(env, log, "worker") as worker,
        httpx.AsyncClient(timeout=30) as http,
        connect(settings) as conn,
    ):
        assert a.url is not None and b.url is not None
        gql_a, gql_b = GraphQLClient(http, a.url), GraphQLClient(http, b.url)
        token = await sign_up(gql_a, inbox, "ada@example.com")
        auth["authorization"] = f"Bearer {token}"

        # 1. Upload through A, follow documentEvents on B to READY.
        async with gql_b.websocket() as events:
            assert (await init(events, auth))["type"] == "connection_ack"
            subscribe = {"id": "1", "type": "subscribe", "payload": {"query": EVENTS}}
            await events.send(json.dumps(subscribe))
            await asyncio.sleep(0.5)  # the subscription listens before the upload
            pdf = make_pdf([f"The kestrel hovers over dune {n}." for n in range(3)])
            response = await gql_a.upload("kestrels.pdf", pdf, token=token, wait=False)
            document_id = response.json()["data"]["uploadDocument"]["id"]
            statuses = await until_event(events, document_id, "READY")
            assert statuses[-1] == "READY" and "FAILED" not in statuses, statuses

            # 2. MAX_WEBSOCKETS_PER_USER=2 counts both replicas: with this socket on B and one
            # on A open, a third on B is refused (4429).
            async with gql_a.websocket() as on_a, gql_b.websocket() as third:
                assert (await init(on_a, auth))["type"] == "connection_ack"
                # WS_MAX_OPERATIONS_PER_USER=2 too: B's documentEvents and one on A are live,
                # another on A is refused (and the socket carries on).
                for op_id in ("2", "3"):
                    payload = {"query": EVENTS}
                    await on_a.send(
                        json.dumps({"id": op_id, "type": "subscribe", "payload": payload})
                    )
                refusal = json.loads(await asyncio.wait_for(on_a.recv(), 20))
                assert (refusal["id"], refusal["type"]) == ("3", "error"), refusal
                assert refusal["payload"][0]["extensions"]["code"] == "RATE_LIMITED", refusal
                assert "WS_MAX_OPERATIONS_PER_USER" in refusal["payload"][0]["message"], refusal
                await third.send(json.dumps({"type": "connection_init", "payload": auth}))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(third.recv(), 20)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
                assert "MAX_WEBSOCKETS_PER_USER" in closed.value.rcvd.reason

        # 3. The search rate limit counts both replicas: 4 a minute, wherever they land.
        for n in range(SEARCHES_PER_MINUTE):
            await (gql_a if n % 2 else gql_b).data(SEARCH, token=token)
        body = await gql_a.execute(SEARCH, token=token)
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED", body

        # 4. MAX_ANSWER_STREAMS_PER_USER=1: while an answer streams on A, one on B is refused.
        ollama.chat_reply = LONG_REPLY
        ollama.token_delay = 0.05
        async with gql_a.websocket() as on_a, gql_b.websocket() as on_b:
            assert (await init(on_a, auth))["type"] == "connection_ack"
            assert (await init(on_b, auth))["type"] == "connection_ack"
            started = await start_answer(on_a, "What do the kestrels do?", op_id="a")
            received: list[str] = []
            while len(received) < 5:
                event = (await next_frame(on_a, started, "a", timeout=30)).event
                if event["__typename"] == "AnswerToken":
                    received.append(event["text"])
            refused = await answer_error(on_b, "b1")
            assert refused["extensions"]["code"] == "RATE_LIMITED", refused
            assert "MAX_ANSWER_STREAMS_PER_USER" in refused["message"], refused
            assert "on every server together" in refused["message"], refused

            # 5. SIGTERM A mid-answer: its grace (1 s) runs out, the socket closes with 1012,
            # the answer is stored `interrupted` with what was streamed; B keeps serving.
            a.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as cut:
                while True:
                    message = json.loads(await asyncio.wait_for(on_a.recv(), 30))
                    if message.get("id") == "a" and message["type"] == "next":
                        event = message["payload"]["data"]["answer"]
                        if event["__typename"] == "AnswerToken":
                            received.append(event["text"])
                        assert event["__typename"] != "AnswerDone", "the answer outran the grace"
            assert cut.value.rcvd is not None and cut.value.rcvd.code == 1012
            async with asyncio.timeout(30):
                assert await a.process.wait() == 0, log_text(log)
            ollama.chat_reply = None
            ollama.token_delay = 0.0
            # A's place was given back as it shut down: B answers now (within the TTL at most).
            async with asyncio.timeout(20):
                while True:
                    try:
                        text, last = await answer_text(on_b, f"b{time.monotonic_ns()}")
                        break
                    except AssertionError as exc:
                        assert "RATE_LIMITED" in str(exc), exc
                        await asyncio.sleep(0.2)
            assert last == "AnswerDone" and "[1]" in text, text

        rows = await conn.fetch(
            "SELECT conversation_id, role, status, content FROM message ORDER BY created_at"
        )
        by_conversation: dict[object, list[tuple[str, str, str]]] = {}
        for row in rows:
            entry = (row["role"], row["status"], row["content"])
            by_conversation.setdefault(row["conversation_id"], []).append(entry)
        # Nothing half-written: each conversation holds its question and its answer, no more.
        assert sorted(
            [(m[0], m[1]) for m in messages] for messages in by_conversation.values()
        ) == [
            [("user", "complete"), ("assistant", "complete")],
            [("user", "complete"), ("assistant", "interrupted")],
        ], rows
        (interrupted,) = [r["content"] for r in rows if r["status"] == "interrupted"]
        assert interrupted.startswith("".join(received)), (interrupted, received)
        assert LONG_REPLY.startswith(interrupted) and interrupted != LONG_REPLY

        # 6. kill -9 the worker in the middle of a document; another worker finishes it once.
        ollama.delay = 0.15  # each embedding request takes a while: the job runs for seconds
        pdf = make_pdf([long_page(f"cliff{n}", 10) for n in range(PAGES)])
        response = await gql_b.upload("cliffs.pdf", pdf, token=token, wait=False)
        cliffs = response.json()["data"]["uploadDocument"]["id"]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status, pages_done, chunks = await document_state(conn, cliffs)
            assert status != "READY", "finished before it could be interrupted"
            assert chunks == 0, "chunks are visible before the document is READY"
            if status == "EMBEDDING" and pages_done >= 4:
                break
            assert time.monotonic() < deadline, log_text(log)
            await asyncio.sleep(0.02)
        worker.process.send_signal(signal.SIGKILL)
        assert await worker.process.wait() == -signal.SIGKILL
        async with child(env, log, "worker") as second:
            deadline = time.monotonic() + START_TIMEOUT
            while (state := await document_state(conn, cliffs))[0] != "READY":
                assert state[2] == 0, "chunks are visible before the document is READY"
                assert time.monotonic() < deadline, log_text(log)
                await asyncio.sleep(0.05)
            second.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await second.process.wait() == 0, log_text(log)
        ollama.delay = 0.0
        document = await conn.fetchrow(
            "SELECT chunk_count, pages_done, error FROM document WHERE id = $1", cliffs
        )
        assert document is not None
        assert (document["pages_done"], document["error"]) == (PAGES, None)
        chunk_rows = await conn.fetch(
            "SELECT ordinal, page, char_start FROM chunk WHERE document_id = $1", cliffs
        )
        assert len(chunk_rows) == document["chunk_count"] > PAGES
        ordinals = sorted(r["ordinal"] for r in chunk_rows)
        assert ordinals == list(range(len(chunk_rows))), "no duplicates"
        assert len({(r["page"], r["char_start"]) for r in chunk_rows}) == len(chunk_rows)
        left = await conn.fetch(
            "SELECT task_name, status FROM procrastinate_jobs"
            " WHERE status IN ('todo', 'doing') AND task_name <> $1",
            RECOVER_TASK,
        )
        assert [(r["task_name"], r["status"]) for r in left] == []
        # B served throughout: the document is searchable through it (a new user: the
        # first one spent its searches).
        token_2 = await sign_up(gql_b, inbox, "grace@example.com")
        assert (await gql_b.data(SEARCH, token=token_2))["search"] == []  # not her workspace


DROP_AFTER = 5
"""Tokens the first client reads on A before its socket drops."""
RESUMED_REPLY = " ".join(f"tern{n}" for n in range(100)) + " [1]."
"""~100 tokens: at 0.05 s a token, ~5 s, most of it left when A's client drops."""
SHORT_REPLY = " ".join(f"gull{n}" for n in range(50)) + " [1]."
"""~50 tokens (~2.5 s): it ends within A's SHUTDOWN_GRACE (6 s) after SIGTERM."""
CONVERSATION = "query($id: ID!) { conversation(id: $id) { messages { role status content } } }"


async def subscribe(ws: ClientConnection, op_id: str, query: str, variables: Json) -> None:
    payload = {"query": query, "variables": variables}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))


def assert_follows(events: list[Json], after: int) -> None:
    """`events` are numbered `after + 1`, `after + 2`, ... and only the last one is an end."""
    assert [e["seq"] for e in events] == list(range(after + 1, after + 1 + len(events))), events
    kinds = [e["__typename"] for e in events]
    assert kinds[:-1] == ["AnswerToken"] * (len(events) - 1), kinds
    assert kinds[-1] in ("AnswerDone", "AnswerError"), kinds


async def stored_answer(gql: GraphQLClient, token: str, conversation_id: str) -> tuple[str, str]:
    """(status, content) of the conversation's answer, read through the API."""
    data = await gql.data(CONVERSATION, {"id": conversation_id}, token=token)
    messages = data["conversation"]["messages"]
    question, answer = messages
    assert (question["role"], question["status"], answer["role"]) == (
        "user",
        "complete",
        "assistant",
    ), messages
    return answer["status"], answer["content"]


async def test_an_answer_dropped_on_one_replica_resumes_on_the_other(
    inbox: Inbox, ollama: StandinState, settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **replica_env(settings, redis_url),
        "MAX_ANSWER_STREAMS_PER_USER": "4",
        "MAX_WEBSOCKETS_PER_USER": "4",
        "WS_MAX_OPERATIONS_PER_USER": "8",
        "SHUTDOWN_GRACE": "6",
    }
    log = tmp_path / "processes.log"
    async with (
        replica(env, log, free_port()) as a,
        replica(env, log, free_port()) as b,
        child(env, log, "worker"),
        httpx.AsyncClient(timeout=30) as http,
        connect(settings) as conn,
    ):
        assert a.url is not None and b.url is not None
        gql_a, gql_b = GraphQLClient(http, a.url), GraphQLClient(http, b.url)
        token = await sign_up(gql_a, inbox, "ada@example.com")
        auth = {"authorization": f"Bearer {token}"}
        pdf = make_pdf([f"The tern dives for fish off cape {n}." for n in range(3)])
        body = (await gql_a.upload("terns.pdf", pdf, token=token)).json()
        assert body["data"]["uploadDocument"]["status"] == "READY", body
        ollama.token_delay = 0.05

        # 1. A few tokens on A, the socket drops; answerStream on B gets the rest, live.
        ollama.chat_reply = RESUMED_REPLY
        async with gql_a.websocket() as on_a:
            assert (await init(on_a, auth))["type"] == "connection_ack"
            await subscribe(on_a, "1", SEQUENCED_ANSWER, {"question": "What do terns do?"})
            first = [answer_event(await read(on_a, "1")) for _ in range(1 + DROP_AFTER)]
        sources = first[0]
        assert sources["__typename"] == "AnswerSources", first
        assert [e["seq"] for e in first] == list(range(1, 2 + DROP_AFTER)), first
        assert {e["__typename"] for e in first[1:]} == {"AnswerToken"}, first
        after = first[-1]["seq"]
        async with gql_b.websocket() as on_b:
            assert (await init(on_b, auth))["type"] == "connection_ack"
            variables = {"messageId": sources["messageId"], "afterSeq": after}
            await subscribe(on_b, "2", ANSWER_STREAM, variables)
            rest = [answer_event(await read(on_b, "2"))]
            # B follows it while A still writes it (not a replay of a finished answer).
            status = await conn.fetchval(
                "SELECT status FROM message WHERE id = $1", uuid.UUID(sources["messageId"])
            )
            assert status == "streaming"
            while (message := await read(on_b, "2"))["type"] != "complete":
                rest.append(answer_event(message))
        assert_follows(rest, after)
        assert rest[-1]["__typename"] == "AnswerDone", rest
        assert rest[-1]["messageId"] == sources["messageId"]
        delivered = token_text(first) + token_text(rest)
        assert delivered == RESUMED_REPLY
        stored = await stored_answer(gql_b, token, sources["conversationId"])
        assert stored == ("complete", delivered)

        # 2. Two answers on A, followed by answerStream on B; SIGTERM on A: the short one
        # ends within the grace (AnswerDone on B), the long one cannot (AnswerError
        # INTERRUPTED on B); each is stored as B received it.
        async with gql_a.websocket() as on_a, gql_b.websocket() as on_b:
            assert (await init(on_a, auth))["type"] == "connection_ack"
            assert (await init(on_b, auth))["type"] == "connection_ack"
            reader_a, reader_b = Follower(on_a), Follower(on_b)
            tasks = [asyncio.create_task(reader_a.run()), asyncio.create_task(reader_b.run())]
            ollama.chat_reply = LONG_REPLY
            await subscribe(on_a, "long", SEQUENCED_ANSWER, {"question": "Do terns dive?"})
            await reader_a.until(lambda: len(reader_a.of("long")) >= 3)
            ollama.chat_reply = SHORT_REPLY
            await subscribe(on_a, "short", SEQUENCED_ANSWER, {"question": "Do terns fish?"})
            await reader_a.until(lambda: len(reader_a.of("short")) >= 2)
            seen = {op: list(reader_a.of(op)) for op in ("long", "short")}
            for op, events in seen.items():
                variables = {"messageId": events[0]["messageId"], "afterSeq": events[-1]["seq"]}
                await subscribe(on_b, op, ANSWER_STREAM, variables)
            await reader_b.until(lambda: bool(reader_b.of("long") and reader_b.of("short")))
            assert not reader_b.done, "an answer ended before A was stopped"
            a.process.send_signal(signal.SIGTERM)
            await reader_b.until(lambda: reader_b.done == {"long", "short"})
            async with asyncio.timeout(30):
                assert await a.process.wait() == 0, log_text(log)
            await reader_a.until(lambda: reader_a.ended)
            assert reader_a.closed is not None and reader_a.closed.code == 1012
            assert reader_b.closed is None, "B kept serving"
            for task in tasks:
                task.cancel()
        ollama.chat_reply = None
        ollama.token_delay = 0.0

        outcomes = {}
        for op, events in seen.items():
            followed = reader_b.of(op)
            assert_follows(followed, events[-1]["seq"])
            text = token_text(events) + token_text(followed)
            status = await stored_answer(gql_b, token, events[0]["conversationId"])
            outcomes[op] = (followed[-1]["__typename"], followed[-1].get("code"), status)
            end_status = "complete" if followed[-1]["__typename"] == "AnswerDone" else "interrupted"
            assert status == (end_status, text), (op, status, text)
        assert outcomes["short"][:2] == ("AnswerDone", None), outcomes
        assert outcomes["long"][:2] == ("AnswerError", "INTERRUPTED"), outcomes
        assert outcomes["short"][2][1] == SHORT_REPLY
        long_text = outcomes["long"][2][1]
        assert LONG_REPLY.startswith(long_text) and long_text != LONG_REPLY
        # What A delivered of the short answer, it delivered whole before closing (1012).
        assert token_text(reader_a.of("short")) == SHORT_REPLY
        # Nothing half-written: no answer left `streaming`, no conversation without its
        # answer.
        rows = await conn.fetch("SELECT role, status FROM message ORDER BY created_at")
        assert sorted((r["role"], r["status"]) for r in rows) == sorted(
            [("user", "complete")] * 3
            + [("assistant", "complete")] * 2
            + [("assistant", "interrupted")]
        ), rows


async def read(ws: ClientConnection, op_id: str) -> Json:
    """The next message for `op_id` (others skipped)."""
    async with asyncio.timeout(30):
        while True:
            message: Json = json.loads(await ws.recv())
            if message.get("id") == op_id:
                return message
