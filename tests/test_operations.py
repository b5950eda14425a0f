"""The operations listener (`rag_gql.operations`): `/readyz` and `/metrics` on
`METRICS_HOST:METRICS_PORT`, apart from the public API, in `rag-gql serve` and
`rag-gql worker` as deployed (child processes), and its start-up errors."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag_gql.config import Settings
from rag_gql.operations import operations_listener
from rag_gql.resources import StartupError, open_services
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.ollama_standin import StandinState
from tests.support.processes import running
from tests.support.serving import environment, free_port
from tests.support.smtp import Inbox

STOP_TIMEOUT = 30.0
"""Seconds a child gets to exit after SIGTERM."""


def families(text: str) -> set[str]:
    """The metric family names of a Prometheus text exposition."""
    return {family.name for family in text_string_to_metric_families(text)}


async def stopped(process: subprocess.Popen[bytes]) -> int:
    """Sends SIGTERM; returns the exit status."""
    process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(process.wait, STOP_TIMEOUT)


async def refused(url: str) -> bool:
    """True when nothing listens at `url` any more."""
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            await http.get(url)
        except httpx.ConnectError:
            return True
    return False


async def test_serve_answers_readiness_and_metrics_on_metrics_port_only(
    settings: Settings, inbox: Inbox, ollama: StandinState, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    public, operations = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    env = environment(settings, METRICS_PORT=str(metrics_port))  # METRICS_HOST: the default
    log = tmp_path / "serve.log"
    args = ["rag_gql.cli", "serve", "--port", str(port), "--log-level", "info"]
    async with (
        running(args, ready_url=f"{public}/healthz", log=log, cwd=tmp_path, env=env) as server,
        httpx.AsyncClient(timeout=10) as http,
    ):
        await sign_up(GraphQLClient(http, public), inbox, "ada@example.com")
        ready = await http.get(f"{operations}/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready"), ready.text
        scraped = await http.get(f"{operations}/metrics")
        assert scraped.headers["content-type"].startswith("text/plain")
        # The public listener's requests, counted in the one registry the scrape reads.
        assert 'operation="login",outcome="ok",type="mutation"' in scraped.text
        assert "rag_gql_ingest_queue_depth" in families(scraped.text)
        for path in ("/readyz", "/metrics"):
            assert (await http.get(f"{public}{path}")).status_code == 404, path
        assert (await http.get(f"{public}/healthz")).status_code == 200
        assert f"readiness and metrics on {operations}" in log.read_text()

        assert await stopped(server) == 0, log.read_text()
    assert await refused(f"{operations}/healthz") and await refused(f"{public}/healthz")


async def test_the_worker_serves_readiness_and_metrics_too(
    settings: Settings, ollama: StandinState, tmp_path: Path
) -> None:
    metrics_port = free_port()
    operations = f"http://127.0.0.1:{metrics_port}"
    env = environment(settings, METRICS_PORT=str(metrics_port))
    log = tmp_path / "worker.log"
    async with (
        running(
            ["rag_gql.cli", "worker"],
            ready_url=f"{operations}/healthz",
            log=log,
            cwd=tmp_path,
            env=env,
        ) as worker,
        httpx.AsyncClient(timeout=10) as http,
    ):
        ready = await http.get(f"{operations}/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready"), ready.text
        scraped = (await http.get(f"{operations}/metrics")).text
        assert {"rag_gql_ingest_queue_depth", "rag_gql_ingest_jobs"} <= families(scraped)

        assert await stopped(worker) == 0, log.read_text()
    assert await refused(f"{operations}/healthz")


async def test_a_metrics_port_in_use_refuses_to_start(
    settings: Settings, ollama: StandinState, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with open_services(settings.model_copy(update={"metrics_port": port})) as services:
            with pytest.raises(StartupError, match=f"METRICS_PORT={port}.*own METRICS_PORT"):
                async with operations_listener(services):
                    pass

        # `rag-gql worker` and `rag-gql serve` say so and exit rather than run without them.
        env = environment(settings, METRICS_PORT=str(port))
        for command in (["worker"], ["serve", "--port", str(free_port())]):
            log = tmp_path / f"{command[0]}.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "rag_gql.cli", *command),
                    env=env,
                    stdout=out,
                    stderr=out,
                )
            async with asyncio.timeout(STOP_TIMEOUT):
                assert await process.wait() != 0, log.read_text()
            assert f"METRICS_PORT={port}" in log.read_text(), log.read_text()


async def test_metrics_port_0_opens_no_listener(settings: Settings, ollama: StandinState) -> None:
    async with (
        open_services(settings.model_copy(update={"metrics_port": 0})) as services,
        operations_listener(services) as listener,
    ):
        assert listener is None


async def test_readiness_says_whether_tesseract_was_found_without_failing_for_it(
    settings: Settings, ollama: StandinState, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OCR is a capability, not a dependency of serving: its absence is reported (and logged
    at start-up with what to install), the status stays ready."""
    listening = {"metrics_port": free_port(), "metrics_host": "127.0.0.1"}
    cases = [
        (
            {"tessdata_prefix": str(tmp_path / "nowhere")},
            {
                "ocr": {
                    "available": False,
                    "error": "tesseract_missing",
                    "missingLanguages": ["eng"],
                }
            },
        ),
        ({}, {"ocr": {"available": True}}),
        ({"ocr": "off"}, None),
    ]
    for update, capabilities in cases:
        changed = settings.model_copy(update={**listening, **update})
        async with (
            open_services(changed) as services,
            operations_listener(services) as listener,
            httpx.AsyncClient(timeout=10) as http,
        ):
            assert listener is not None
            ready = await http.get(f"{listener.url}/readyz")
        body = ready.json()
        assert (ready.status_code, body["status"]) == (200, "ready"), body
        assert body.get("capabilities") == capabilities, body
    assert "TESSERACT NOT FOUND" in caplog.text
    assert "apt-get install tesseract-ocr tesseract-ocr-eng" in caplog.text
