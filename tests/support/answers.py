"""Runs the `answer` subscription over `graphql-transport-ws`, keeping every frame and its time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

Json = dict[str, Any]

ANSWER = """
subscription Answer($question: String!, $k: Int!) {
  answer(question: $question, k: $k) {
    __typename
    ... on AnswerSources { sources { score text page document { id filename } } }
    ... on AnswerToken { seq text }
    ... on AnswerDone { seq promptTokens completionTokens timeToFirstTokenMs totalMs }
    ... on AnswerError { code message }
  }
}
"""


@dataclass(frozen=True, slots=True)
class Frame:
    """One server message for the operation; `at` is seconds since `subscribe` was sent."""

    at: float
    message: Json
    raw: str

    @property
    def type(self) -> str:
        kind: str = self.message["type"]
        return kind

    @property
    def event(self) -> Json:
        """The `answer` event of a `next` frame without errors."""
        assert self.type == "next", self.message
        payload: Json = self.message["payload"]
        assert not payload.get("errors"), payload
        event: Json = payload["data"]["answer"]
        return event


async def start_answer(ws: ClientConnection, question: str, k: int = 5, op_id: str = "1") -> float:
    """Sends `subscribe` for `answer`; returns the monotonic time it was sent."""
    payload = {"query": ANSWER, "variables": {"question": question, "k": k}}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))
    return time.monotonic()


async def next_frame(
    ws: ClientConnection, started: float, op_id: str = "1", timeout: float = 10.0
) -> Frame:
    """Waits for the next message for `op_id` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            at = time.monotonic() - started
            assert isinstance(raw, str), raw
            message: Json = json.loads(raw)
            if message.get("id") == op_id:
                return Frame(at=at, message=message, raw=raw)


async def rest_of_answer(
    ws: ClientConnection, started: float, op_id: str = "1", timeout: float = 10.0
) -> list[Frame]:
    """Collects the frames for `op_id` up to and including `complete` or `error`."""
    frames: list[Frame] = []
    while True:
        frame = await next_frame(ws, started, op_id, timeout)
        frames.append(frame)
        if frame.type in ("complete", "error"):
            return frames


async def answer_frames(
    ws: ClientConnection, question: str, k: int = 5, op_id: str = "1", timeout: float = 10.0
) -> list[Frame]:
    """Subscribes to `answer` and returns all its frames, the last being `complete`/`error`."""
    started = await start_answer(ws, question, k, op_id)
    return await rest_of_answer(ws, started, op_id, timeout)


def events(frames: Sequence[Frame]) -> list[Json]:
    """The `answer` events of a stream that completed normally (asserts it did)."""
    assert frames, "no frames"
    assert frames[-1].type == "complete", frames[-1].message
    return [frame.event for frame in frames[:-1]]


def kinds(answer_events: Sequence[Json]) -> list[str]:
    """The `__typename` of each event."""
    return [str(event["__typename"]) for event in answer_events]


SEQUENCED_EVENT = """
    __typename
    ... on AnswerSources { seq messageId conversationId }
    ... on AnswerToken { seq text }
    ... on AnswerDone { seq messageId }
    ... on AnswerError { seq code message }
"""
"""The fields of an answer event that resuming needs: `seq`, the answer's `messageId`."""
SEQUENCED_ANSWER = (
    f"subscription($question: String!) {{ answer(question: $question) {{ {SEQUENCED_EVENT} }} }}"
)
"""`answer` with every event's `seq` (variables: `question`)."""
ANSWER_STREAM = (
    "subscription($messageId: ID!, $afterSeq: Int) "
    f"{{ answerStream(messageId: $messageId, afterSeq: $afterSeq) {{ {SEQUENCED_EVENT} }} }}"
)
"""`answerStream`: an answer's events after `afterSeq` (variables: `messageId`, `afterSeq`)."""


def answer_event(message: Json) -> Json:
    """The event of a `next` frame of `answer` or `answerStream` (asserts it has no errors)."""
    assert message["type"] == "next", message
    payload: Json = message["payload"]
    assert not payload.get("errors"), payload
    data: Json = payload["data"]
    event: Json = data.get("answer") or data["answerStream"]
    return event


def token_text(answer_events: Sequence[Json]) -> str:
    """The text of the `AnswerToken` events, in order."""
    return "".join(str(e["text"]) for e in answer_events if e["__typename"] == "AnswerToken")


@dataclass
class Follower:
    """Reads a socket in the background (`run`), keeping each operation's events until its
    `complete` (`done`) or the socket's close (`closed`: its close frame, or None)."""

    ws: ClientConnection
    events: dict[str, list[Json]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    closed: Close | None = None
    ended: bool = False

    async def run(self) -> None:
        """Reads until the socket closes; a frame that is not `next`/`complete` fails it."""
        try:
            async for raw in self.ws:
                message: Json = json.loads(raw)
                op_id = str(message.get("id"))
                if message["type"] == "complete":
                    self.done.add(op_id)
                else:
                    self.events.setdefault(op_id, []).append(answer_event(message))
        except ConnectionClosed as exc:
            self.closed = exc.rcvd
        finally:
            self.ended = True

    async def until(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Waits until `check()` is true (asserting the socket is still read)."""
        async with asyncio.timeout(timeout):
            while not check():
                assert not self.ended or check(), (self.closed, self.events)
                await asyncio.sleep(0.01)

    def of(self, op_id: str) -> list[Json]:
        """The events of `op_id` so far."""
        return self.events.get(op_id, [])
