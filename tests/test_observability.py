"""Health, readiness, metrics, request ids, and logs that hold no secrets."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag_gql.config import Settings
from rag_gql.observability.logs import QUIET_LOGGERS, make_handler
from tests.support.accounts import LOGIN, PASSWORD, REGISTER, VERIFY, sign_up
from tests.support.answers import answer_frames, events
from tests.support.graphql_client import GraphQLClient, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_server
from tests.support.smtp import Inbox
from tests.support.sql import connect

PAGES = [
    "Sourdough bread needs flour, water, salt and a lively starter.",
    "The lighthouse keeper counts ships passing the northern reef.",
]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_healthz_and_readyz(server_url: str, metrics_url: str, ollama: StandinState) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server_url}/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{metrics_url}/healthz")).json() == {"status": "ok"}
        response = await http.get(f"{metrics_url}/readyz")
        # Readiness and metrics live on the operations listener only.
        for path in ("/readyz", "/metrics"):
            assert (await http.get(f"{server_url}{path}")).status_code == 404, path
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert checks["database"] == {"ok": True}
    assert checks["migrations"]["ok"] is True
    assert checks["migrations"]["current"] == checks["migrations"]["head"]
    assert checks["ollama"] == {"ok": True, "missingModels": []}


async def test_readyz_fails_without_ollama_or_current_migrations(
    settings: Settings, ollama: StandinState
) -> None:
    down = settings.model_copy(update={"ollama_url": "http://127.0.0.1:9"})
    async with serve_server(down) as served, httpx.AsyncClient() as http:
        response = await http.get(f"{served.metrics_url}/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["ollama"] == {"ok": False, "error": "upstream_unavailable"}
        assert body["checks"]["database"] == {"ok": True}
        assert (await http.get(f"{served.url}/healthz")).status_code == 200

    async with serve_server(settings) as served, httpx.AsyncClient() as http:
        async with connect(settings) as conn:
            await conn.execute("UPDATE alembic_version SET version_num = '0001'")
        response = await http.get(f"{served.metrics_url}/readyz")
        assert response.status_code == 503
        migrations = response.json()["checks"]["migrations"]
        assert migrations["ok"] is False and migrations["current"] == ["0001"]


async def test_request_ids(server_url: str) -> None:
    async with httpx.AsyncClient() as http:
        first = await http.get(f"{server_url}/healthz")
        second = await http.get(f"{server_url}/healthz")
        kept = await http.get(f"{server_url}/healthz", headers={"X-Request-Id": "lb-7f3a.2"})
        bad = await http.get(f"{server_url}/healthz", headers={"X-Request-Id": "not ok!" * 20})
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert kept.headers["x-request-id"] == "lb-7f3a.2"
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])


async def test_metrics(
    gql: GraphQLClient, metrics_url: str, inbox: Inbox, ollama: StandinState
) -> None:
    await gql.execute("{ me { id } }")  # UNAUTHENTICATED
    await gql.execute("{ nope }")  # does not validate
    token = await sign_up(gql, inbox, "ada@example.com")
    response = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)
    assert "errors" not in response.json()
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        # Tokens further apart than ANSWER_TOKEN_WINDOW_MS: an event each.
        ollama.token_delay = 0.05
        got = events(await answer_frames(ws, "What does sourdough bread need?"))
    tokens = sum(e["__typename"] == "AnswerToken" for e in got)
    assert tokens > 1
    ollama.fail_status = 503
    body = await gql.execute('{ search(query: "bread") { text } }', token=token)
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_ERROR"

    text = (await gql.http.get(f"{metrics_url}/metrics")).text
    got_samples = samples(text)

    def value(name: str, **labels: str) -> float:
        return got_samples.get((name, tuple(sorted(labels.items()))), 0.0)

    requests = "rag_gql_graphql_requests_total"
    assert value(requests, type="query", operation="me", outcome="UNAUTHENTICATED") == 1
    assert value(requests, type="unknown", operation="unknown", outcome="GRAPHQL_VALIDATION_FAILED")
    assert value(requests, type="mutation", operation="login", outcome="ok") == 1
    assert value(requests, type="subscription", operation="answer", outcome="ok") == 1
    assert value(requests, type="query", operation="search", outcome="UPSTREAM_ERROR") == 1
    assert value("rag_gql_graphql_request_duration_seconds_count", type="query", operation="me")
    assert value("rag_gql_answer_tokens_streamed_total") == tokens
    assert value("rag_gql_answer_time_to_first_token_seconds_count") == 1
    assert value("rag_gql_live_subscriptions", operation="answer") == 0
    assert value("rag_gql_ollama_errors_total", endpoint="/api/embed", kind="http_503") == 1
    assert "rag_gql_ingest_queue_depth" in text


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log record of the test, rendered as in production (JSON), at DEBUG."""
    stream = io.StringIO()
    handler = make_handler(stream, json=True)
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # The tests' own SMTP sink (not the app) logs whole messages at DEBUG.
    sink_level = logging.getLogger("mail.log").level
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("mail.log").setLevel(sink_level)
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


async def test_no_secrets_in_the_log_of_a_full_run(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, json_log: io.StringIO
) -> None:
    email = "grace@example.com"
    secrets: dict[str, str] = {"password": PASSWORD}
    await gql.data(REGISTER, {"e": email, "p": PASSWORD})
    secrets["signup code"] = await inbox.wait_for_code(email)
    await gql.data(VERIFY, {"e": email, "c": secrets["signup code"], "p": PASSWORD})
    await gql.execute(LOGIN, {"e": email, "p": "wrong " + PASSWORD})  # a failed login too
    login = await gql.data(
        "mutation($e: String!, $p: String!) "
        "{ login(email: $e, password: $p) { accessToken refreshToken } }",
        {"e": email, "p": PASSWORD},
    )
    secrets["first access token"] = login["login"]["accessToken"]
    secrets["first refresh token"] = login["login"]["refreshToken"]
    renewed = await gql.data(
        "mutation($t: String!) { refreshToken(token: $t) { accessToken refreshToken } }",
        {"t": secrets["first refresh token"]},
    )
    token = secrets["access token"] = renewed["refreshToken"]["accessToken"]
    secrets["refresh token"] = renewed["refreshToken"]["refreshToken"]

    response = await gql.upload("notes.pdf", make_pdf(PAGES), token=token)
    assert "errors" not in response.json(), response.json()
    await gql.data('{ search(query: "bread starter", k: 2) { text } }', token=token)
    async with gql.websocket() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        assert events(await answer_frames(ws, "What does sourdough bread need?"))
    me = await gql.data("{ workspaces { id personal } }", token=token)
    workspace = me["workspaces"][0]["id"]
    created = await gql.data(
        'mutation($w: ID!) { createApiKey(workspaceId: $w, name: "ci", role: VIEWER) { secret } }',
        {"w": workspace},
        token=token,
    )
    secrets["API key"] = created["createApiKey"]["secret"]
    searched = await gql.http.post(
        f"{gql.base_url}/graphql",
        json={"query": '{ search(query: "lighthouse") { text } }'},
        headers={"X-API-Key": secrets["API key"]},
    )
    assert "errors" not in searched.json()
    await gql.data("mutation($e: String!) { requestPasswordReset(email: $e) }", {"e": email})
    secrets["reset code"] = await inbox.wait_for_code(email, after=1)
    secrets["new password"] = "purple velvet antelope dances"
    await gql.data(
        "mutation($e: String!, $c: String!, $n: String!) "
        "{ resetPassword(email: $e, code: $c, newPassword: $n) }",
        {"e": email, "c": secrets["reset code"], "n": secrets["new password"]},
    )
    # Something went wrong with each kind of credential as well.
    await gql.execute("{ me { id } }", token=secrets["first access token"] + "x")
    await gql.execute("{ me { id } }", token=secrets["API key"][:-2])

    lines = json_log.getvalue().splitlines()
    assert len(lines) > 20
    records = [json.loads(line) for line in lines]  # every line is JSON
    served = [r for r in records if r.get("logger") == "rag_gql.access"]
    assert served and all(re.fullmatch(r"[0-9a-f]{32}", r["request_id"]) for r in served)
    assert any(r.get("path") == "/graphql" and r.get("status") == 200 for r in served)
    for record in records:
        # Timestamps and ids are digits and hex by nature: a 6-digit code may sit in them.
        for key in ("timestamp", "request_id", "connection_id", "duration_ms"):
            record.pop(key, None)
        text = json.dumps(record)
        for name, secret in secrets.items():
            found = re.search(rf"(?<![0-9]){re.escape(secret)}(?![0-9])", text)
            assert found is None, f"the {name} is in the log: {text}"
