"""`rag-gql serve` as a user runs it: its own embedded PostgreSQL, a client's whole flow over
HTTP and WebSocket, a clean SIGTERM, and a restart that finds the data again."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from tests.support.accounts import LOGIN, PASSWORD, REGISTER, VERIFY
from tests.support.answers import answer_frames, events, kinds, next_frame, start_answer
from tests.support.graphql_client import GraphQLClient, init
from tests.support.ollama_standin import OllamaStandin, StandinState, split_tokens
from tests.support.pdfs import make_pdf
from tests.support.serving import free_port
from tests.support.smtp import Inbox, SmtpSink

STARTUP_TIMEOUT = 90.0  # the first start runs initdb
SHUTDOWN_TIMEOUT = 15.0
EMAIL = "grace@example.com"


def _server_env(data_dir: Path, ollama: OllamaStandin, smtp_port: int) -> dict[str, str]:
    """The environment of a fresh deployment: no DATABASE_URL and no JWT_SECRET."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings}
    env.update(
        DATA_DIR=str(data_dir),
        OLLAMA_URL=ollama.url,
        EMBED_DIM=str(ollama.state.dim),  # the stand-in's embedding size
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        MAIL_FROM="rag-gql e2e <e2e@example.com>",
        # A streaming answer gets this long on SIGTERM before its socket closes.
        SHUTDOWN_GRACE="3",
        # The operations listener on a free port (tests/test_operations.py scrapes it).
        METRICS_PORT=str(free_port()),
    )
    return env


def _postgres_processes(data_dir: Path) -> list[int]:
    """Pids of live processes named like postgres whose command line mentions `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        argv = [part.decode(errors="replace") for part in cmdline.split(b"\0") if part]
        if argv and "postgres" in Path(argv[0]).name and str(data_dir) in " ".join(argv):
            found.append(int(entry.name))
    return found


class Served:
    """One `rag-gql serve` subprocess."""

    def __init__(self, process: asyncio.subprocess.Process, base_url: str, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> int:
        """Sends SIGTERM; returns the exit status (raises if it takes over SHUTDOWN_TIMEOUT)."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            return await self.process.wait()


@asynccontextmanager
async def serve(env: dict[str, str], cwd: Path, name: str) -> AsyncIterator[Served]:
    """Runs `rag-gql serve` until it answers /healthz; makes sure it is gone afterwards."""
    port = free_port()
    log = cwd / f"{name}.log"
    command = [sys.executable, "-m", "rag_gql.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, cwd=cwd, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                assert process.returncode is None, f"serve exited early:\n{served.output()}"
                assert time.monotonic() < deadline, f"serve did not start:\n{served.output()}"
                try:
                    if (await http.get(f"{served.base_url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield served
    finally:
        if process.returncode is None:  # the test failed before stopping it: stop it anyway
            try:
                await served.stop()
            except TimeoutError:
                process.kill()
                await process.wait()


async def _assert_stops_cleanly(served: Served, data_dir: Path) -> None:
    started = time.monotonic()
    status = await served.stop()
    took = time.monotonic() - started
    assert status == 0, served.output()
    assert took < SHUTDOWN_TIMEOUT
    assert "stopping the embedded PostgreSQL" in served.output()
    for _ in range(50):  # `pg_ctl stop` waits, but give the processes a moment to vanish
        if not _postgres_processes(data_dir):
            break
        await asyncio.sleep(0.1)
    assert _postgres_processes(data_dir) == [], served.output()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """DATA_DIR for the served process. Not under tmp_path: pytest keeps its temp root at mode
    0700 (and other pytest runs on the machine reset it), while the embedded server runs as
    its own system user."""
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-e2e-"))
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


async def test_serve_end_to_end(
    ollama_server: OllamaStandin,
    ollama: StandinState,
    smtp_server: SmtpSink,
    inbox: Inbox,
    tmp_path: Path,
    data_dir: Path,
) -> None:
    env = _server_env(data_dir, ollama_server, smtp_server.port)
    reply = "Lighthouses guide ships past the reef [1]."
    expected_tokens = split_tokens(reply)

    async with (
        serve(env, tmp_path, "first") as served,
        httpx.AsyncClient(timeout=30) as http,
    ):
        gql = GraphQLClient(http, served.base_url)
        # Its own embedded PostgreSQL runs on DATA_DIR.
        assert _postgres_processes(data_dir), served.output()

        # A browser gets GraphiQL.
        page = await http.get(f"{served.base_url}/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "graphiql" in page.text.lower()

        # Register, read the code from the mail, verify, log in.
        registered = await gql.data(REGISTER, {"e": EMAIL, "p": PASSWORD})
        assert registered["register"]["email"] == EMAIL
        code = await inbox.wait_for_code(EMAIL)
        verified = await gql.data(VERIFY, {"e": EMAIL, "c": code, "p": PASSWORD})
        assert verified["verifyEmail"]["email"] == EMAIL
        token = (await gql.data(LOGIN, {"e": EMAIL, "p": PASSWORD}))["login"]["accessToken"]

        # Upload: refused without the CSRF preflight header, accepted with it.
        pdf = make_pdf(
            [
                "Sourdough bread needs flour, water, salt and a lively starter.",
                "Lighthouses guide ships past the northern reef at night.",
            ]
        )
        refused = await gql.upload("coast.pdf", pdf, token=token, preflight=False)
        assert refused.status_code == 400
        uploaded = await gql.upload("coast.pdf", pdf, token=token)
        body = uploaded.json()
        assert "errors" not in body, body
        document = body["data"]["uploadDocument"]
        assert (document["status"], document["pageCount"]) == ("READY", 2)

        hits = await gql.data(
            "query($q: String!) { search(query: $q, k: 2) { page document { id filename } } }",
            {"q": "what guides ships past the reef?"},
            token=token,
        )
        assert hits["search"][0]["page"] == 2
        assert hits["search"][0]["document"]["id"] == document["id"]

        # The answer streams over WebSocket, token by token.
        ollama.chat_reply = reply
        ollama.token_delay = 0.1
        async with gql.websocket() as ws:
            ack = await init(ws, {"authorization": f"Bearer {token}"})
            assert ack["type"] == "connection_ack"
            frames = await answer_frames(ws, "What guides ships past the reef?", k=2)
        got = events(frames)
        assert kinds(got) == ["AnswerSources"] + ["AnswerToken"] * len(expected_tokens) + [
            "AnswerDone"
        ]
        assert got[0]["sources"][0]["page"] == 2
        assert [e["text"] for e in got[1:-1]] == expected_tokens
        token_times = [f.at for f in frames[1:-2]]
        complete_at = frames[-1].at
        gaps = [b - a for a, b in itertools.pairwise(token_times)]
        assert 0.05 < statistics.median(gaps) < 0.3, gaps  # token_delay apart, as streamed
        assert token_times[0] < complete_at - (len(expected_tokens) - 2) * 0.05

        # SIGTERM while an answer is streaming: the client is told (1012), the process exits 0.
        ollama.chat_reply = " ".join(["word"] * 200)
        ollama.token_delay = 0.2
        async with gql.websocket() as ws:
            await init(ws, {"authorization": f"Bearer {token}"})
            started = await start_answer(ws, "What guides ships past the reef?")
            for _ in range(3):  # sources and two tokens
                assert (await next_frame(ws, started)).type == "next"
            stopping = asyncio.create_task(_assert_stops_cleanly(served, data_dir))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await next_frame(ws, started)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012  # service restart
            await stopping

    secret = data_dir / "jwt_secret"
    assert secret.is_file()
    assert len(secret.read_text().strip()) >= 32

    # Same DATA_DIR again: the account, the document and the signing key are all still there.
    ollama.reset()
    async with (
        serve(env, tmp_path, "second") as served,
        httpx.AsyncClient(timeout=30) as http,
    ):
        gql = GraphQLClient(http, served.base_url)
        login = await gql.data(LOGIN, {"e": EMAIL, "p": PASSWORD})
        assert login["login"]["accessToken"]
        listing = await gql.data(
            "{ documents { edges { node { id filename } } } }",
            token=token,  # issued by the first run: the persisted secret still verifies it
        )
        assert [e["node"] for e in listing["documents"]["edges"]] == [
            {"id": document["id"], "filename": "coast.pdf"}
        ]
        await _assert_stops_cleanly(served, data_dir)
