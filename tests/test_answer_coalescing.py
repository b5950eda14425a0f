"""Tokens that arrive together go to a follower as one event (`Run.follow`): the texts joined
in order, numbered with the last one's `seq`, nothing lost at the end or when the follower
stops; and through the app, the events' concatenation is the stored answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from rag_gql.config import Settings
from rag_gql.db.models import Role
from rag_gql.services.access import Principal
from rag_gql.services.answer_runs import Run
from rag_gql.services.answers import Done, Failed, Sequenced, Sources, Token
from tests.support.accounts import sign_up
from tests.support.answers import answer_frames, events
from tests.support.graphql_client import init
from tests.support.ollama_standin import StandinState, split_tokens
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect as sql

LONG = 30.0
"""A window far longer than any test waits: whatever must not wait for it shows it."""


def _run() -> Run:
    principal = Principal(workspace_id=uuid.uuid4(), role=Role.OWNER, user_id=uuid.uuid4())
    run = Run(principal, uuid.uuid4())
    run.publish(Sources([], uuid.uuid4(), "q", run.message_id))
    return run


def _done(run: Run) -> Done:
    return Done(run.message_id, [], True, 1, 1, 1.0, 2.0)


def _texts(items: list[Sequenced]) -> list[str]:
    return [item.event.text for item in items if isinstance(item.event, Token)]


async def _next(follower: AsyncIterator[Sequenced]) -> Sequenced:
    return await asyncio.wait_for(anext(follower), 5)


async def test_tokens_waiting_together_go_as_one_event_numbered_with_the_last() -> None:
    run = _run()
    for text in ("Bread", " needs", " salt"):
        run.publish(Token(text))
    run.publish(_done(run))
    got = [item async for item in run.follow(0)]
    assert [type(item.event).__name__ for item in got] == ["Sources", "Token", "Done"]
    assert got[1] == Sequenced(4, Token("Bread needs salt"))
    assert got[2].seq == 5


async def test_the_window_gathers_the_tokens_after_a_token_event_in_order() -> None:
    run = _run()
    follower = aiter(run.follow(0, window=LONG))
    assert isinstance((await _next(follower)).event, Sources)
    run.publish(Token("A"))
    first = await _next(follower)  # the first token does not wait for the window
    assert first == Sequenced(2, Token("A"))
    pending = asyncio.ensure_future(anext(follower))
    for text in (" b", " c", " d"):
        run.publish(Token(text))
        await asyncio.sleep(0.01)
    assert not pending.done()  # held for more, within the window
    run.publish(_done(run))  # the end does not wait: the held tokens go, then the end
    held = await asyncio.wait_for(pending, 5)
    assert held == Sequenced(5, Token(" b c d"))
    end = await _next(follower)
    assert end.seq == 6 and isinstance(end.event, Done)
    assert "".join(run.parts) == "A b c d"


async def test_a_window_of_zero_sends_every_waiting_group_at_once() -> None:
    run = _run()
    follower = aiter(run.follow(1))
    run.publish(Token("x"))
    assert await _next(follower) == Sequenced(2, Token("x"))
    run.publish(Token("y"))
    assert await _next(follower) == Sequenced(3, Token("y"))
    run.publish(Failed("UPSTREAM_ERROR", "broken"))
    end = await _next(follower)
    assert (end.seq, end.event) == (4, Failed("UPSTREAM_ERROR", "broken"))


async def test_a_follower_cancelled_while_holding_tokens_loses_nothing_for_the_next() -> None:
    run = _run()
    follower = aiter(run.follow(0, window=LONG))
    await _next(follower)
    run.publish(Token("one"))
    seen = await _next(follower)
    pending = asyncio.ensure_future(anext(follower))
    run.publish(Token(" two"))
    await asyncio.sleep(0.01)
    pending.cancel()  # the client left while tokens were held
    await asyncio.gather(pending, return_exceptions=True)
    run.publish(Token(" three"))
    run.publish(_done(run))
    rest = [item async for item in run.follow(seen.seq)]  # resumed after the last it got
    assert _texts([seen, *rest]) == ["one", " two three"]
    assert [item.seq for item in rest] == [4, 5]
    assert "".join(_texts([seen, *rest])) == "".join(run.parts)


async def test_streamed_token_events_concatenate_to_the_stored_answer(
    inbox: Inbox, ollama: StandinState, settings: Settings
) -> None:
    reply = "Sourdough needs flour, water, salt and a lively starter, fed every day [1]."
    ollama.chat_reply = reply
    ollama.token_delay = 0.002  # far inside the window: the tokens come in a few events
    update = {"answer_token_window_ms": 200.0}
    async with serve_client(settings.model_copy(update=update)) as app:
        token = await sign_up(app, inbox, "ada@example.com")
        async with app.websocket() as ws:
            reply_init = await init(ws, {"authorization": f"Bearer {token}"})
            assert reply_init["type"] == "connection_ack", reply_init
            got = events(await answer_frames(ws, "What does sourdough need?"))
    pieces = [str(e["text"]) for e in got if e["__typename"] == "AnswerToken"]
    assert "".join(pieces) == reply
    assert len(pieces) < len(split_tokens(reply))  # some event carries several tokens
    seqs = [int(e["seq"]) for e in got[1:]]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 2  # increasing: the order kept
    done = got[-1]
    assert done["__typename"] == "AnswerDone"
    assert done["seq"] == len(split_tokens(reply)) + 2  # each token keeps its number
    async with sql(settings) as conn:
        row = await conn.fetchrow("SELECT content, status FROM message WHERE role = 'assistant'")
    assert row is not None and (row["content"], row["status"]) == (reply, "complete")
