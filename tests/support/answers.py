"""Runs the `answer` subscription over `graphql-transport-ws`, keeping every frame and its time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection

Json = dict[str, Any]

ANSWER = """
subscription Answer($question: String!, $k: Int!) {
  answer(question: $question, k: $k) {
    __typename
    ... on AnswerSources { sources { score text page document { id filename } } }
    ... on AnswerToken { text }
    ... on AnswerDone { promptTokens completionTokens timeToFirstTokenMs totalMs }
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
