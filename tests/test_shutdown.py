"""Graceful shutdown (`rag_gql.server.GracefulServer`), in process: `should_exit` is what
uvicorn's SIGTERM handler sets (tests/test_e2e.py sends a real SIGTERM to `rag-gql serve`)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.answers import Frame, next_frame, start_answer
from tests.support.graphql_client import GraphQLClient, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_server
from tests.support.smtp import Inbox
from tests.support.sql import connect

QUESTION = "What does sourdough bread need?"
GRACE = 3.0


async def until_closed(ws_frames: list[Frame], ws: object, started: float) -> int:
    """Collects frames of operation 1 until the socket closes; returns the close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws_frames.append(await next_frame(ws, started, timeout=15))  # type: ignore[arg-type]
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_running_answers_finish_within_the_grace_then_sockets_close(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    async with (
        serve_server(settings.model_copy(update={"shutdown_grace": GRACE})) as served,
        httpx.AsyncClient(timeout=10) as http,
    ):
        url, server = served.url, served.server
        assert (await http.get(f"{served.metrics_url}/readyz")).status_code == 200
        gql = GraphQLClient(http, url)
        token = await sign_up(gql, inbox, "ada@example.com")
        pdf = make_pdf(["Sourdough bread needs flour, water, salt and a lively starter."])
        assert (await gql.upload("notes.pdf", pdf, token=token)).json()["data"]
        auth = {"authorization": f"Bearer {token}"}
        async with gql.websocket() as long_ws, gql.websocket() as short_ws:
            await init(long_ws, auth)
            await init(short_ws, auth)
            ollama.token_delay = 0.1
            ollama.chat_reply = " ".join(["long"] * 200)  # 20 s: longer than the grace
            long_started = await start_answer(long_ws, QUESTION)
            long_frames = [await next_frame(long_ws, long_started) for _ in range(2)]
            ollama.chat_reply = " ".join(["short"] * 12)  # 1.2 s: within it
            short_started = await start_answer(short_ws, QUESTION)
            short_frames = [await next_frame(short_ws, short_started) for _ in range(2)]

            stopping = time.monotonic()
            server.should_exit = True  # as on SIGTERM
            await asyncio.sleep(0.5)
            # No new connections while the answers finish.
            async with httpx.AsyncClient() as fresh:
                with pytest.raises(httpx.ConnectError):
                    await fresh.get(f"{url}/healthz")
                # Not ready any more (a balancer sends no one), while metrics still scrape.
                ready = await fresh.get(f"{served.metrics_url}/readyz")
                assert (ready.status_code, ready.json()["status"]) == (503, "stopping")
                assert (await fresh.get(f"{served.metrics_url}/metrics")).status_code == 200

            short_code = await until_closed(short_frames, short_ws, short_started)
            long_code = await until_closed(long_frames, long_ws, long_started)
            took = time.monotonic() - stopping

        # The short answer completed, then its socket was closed with 1012 (service restart);
        # the long one was cut at the grace with the same close frame.
        kinds = [f.event["__typename"] for f in short_frames[:-1]]
        assert kinds[-1] == "AnswerDone" and short_frames[-1].type == "complete"
        assert short_code == 1012
        assert long_frames[-1].type == "next"
        assert long_code == 1012
        assert GRACE - 0.5 < took < GRACE + 3, took
    # Both listeners are closed once the shutdown is over.
    async with httpx.AsyncClient() as after:
        for base in (served.url, served.metrics_url):
            with pytest.raises(httpx.ConnectError):
                await after.get(f"{base}/healthz")
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT status, content FROM message WHERE role = 'assistant' ORDER BY created_at"
        )
    stored = {row["status"]: row["content"] for row in rows}
    assert sorted(stored) == ["complete", "interrupted"]
    assert stored["complete"] == " ".join(["short"] * 12)
    assert stored["interrupted"].startswith("long long")
