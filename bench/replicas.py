"""Throughput of one and of two API processes on one PostgreSQL and one Redis: rounds (a
`search` over HTTP, then a streamed `answer` over a WebSocket) per second.

Usage:
    python bench/replicas.py                       # 16 clients, 20 s each of 1, 2, 1 replicas
    python bench/replicas.py --clients 8 --duration 10

Runs on this machine, each part in its own process: an embedded PostgreSQL (temporary,
started by this script and migrated with `rag-gql migrate`), `redis-server` for
`RATE_LIMIT_STORAGE_URI` (the caps and rate limits shared by the replicas), the Ollama
stand-in (`--token-delay` seconds a token), one `rag-gql worker`, and 1 then 2 `rag-gql
serve` with `WORKER_IN_PROCESS=false`; the clients (this process) spread over the replicas
round-robin. The rate limits and the per-user caps are raised (tests/support/limits.py): the
run measures the servers, not their limits. On a machine with few cores the replicas share
the CPUs with PostgreSQL, the stand-in and the clients: two replicas then show that the
deployment is correct and what sharing costs, not how it scales. With two replicas or more,
the run also checks, once, that an answer dropped on one replica resumes on another
(`answerStream`, `resume_across`). Exits 1 when a round or that check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.db.embedded import start_embedded  # noqa: E402 - after sys.path
from tests.support.accounts import sign_up  # noqa: E402
from tests.support.answers import (  # noqa: E402
    ANSWER_STREAM,
    SEQUENCED_ANSWER,
    answer_event,
    token_text,
)
from tests.support.graphql_client import GraphQLClient  # noqa: E402
from tests.support.limits import as_environment, raised_limits  # noqa: E402
from tests.support.processes import app_environment, running  # noqa: E402
from tests.support.redis import redis_server  # noqa: E402
from tests.support.serving import free_port  # noqa: E402
from tests.support.smtp import SmtpSink  # noqa: E402

SEARCH = "query($q: String!) { search(query: $q, k: 5) { score page } }"
ANSWER = (
    "subscription($q: String!) { answer(question: $q, k: 4) { __typename "
    "... on AnswerError { code message } } }"
)
QUESTION = "Which bird hovers over the dunes at dawn?"
WIDTHS = (8, 7, 9, 8, 8, 7)
DROP_AFTER = 3
"""Tokens read on the first replica before the resume check drops its socket."""
CONVERSATION = "query($id: ID!) { conversation(id: $id) { messages { role status content } } }"


def document(seed: int) -> bytes:
    """A small Markdown document of its own for each `seed` (a few chunks)."""
    lines = [f"# Field notes {seed}"]
    lines += [
        f"Note {n}: the kestrel hovers over dune {seed}-{n} at dawn, facing the wind."
        for n in range(40)
    ]
    return "\n\n".join(lines).encode()


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank `p`-th percentile of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


@dataclass
class Result:
    """One configuration's rounds: their durations (ms) and the failures."""

    replicas: int
    seconds: float = 0.0
    rounds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def row(self) -> str:
        rate = len(self.rounds) / self.seconds if self.seconds else 0.0
        return (
            f"{self.replicas:>8} {len(self.rounds):>7} {rate:>9.1f} "
            f"{percentile(self.rounds, 50):>8.0f} {percentile(self.rounds, 95):>8.0f} "
            f"{len(self.errors):>7}"
        )


async def open_socket(base_url: str, token: str) -> ClientConnection:
    """An acknowledged `graphql-transport-ws` socket."""
    url = base_url.replace("http://", "ws://") + "/graphql"
    ws = await connect(url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=60)
    init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
    await ws.send(json.dumps(init))
    reply = json.loads(await ws.recv())
    if reply.get("type") != "connection_ack":
        raise RuntimeError(f"no connection_ack: {reply}")
    return ws


async def one_answer(ws: ClientConnection, op_id: str) -> None:
    """Runs an `answer` to its `complete`.

    Raises:
        RuntimeError: an error event or message instead.
    """
    payload = {"query": ANSWER, "variables": {"q": QUESTION}}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("id") != op_id:
            continue
        if frame["type"] == "complete":
            return
        if frame["type"] == "error" or frame["payload"].get("errors"):
            raise RuntimeError(json.dumps(frame)[:300])
        event = frame["payload"]["data"]["answer"]
        if event["__typename"] == "AnswerError":
            raise RuntimeError(f"{event['code']}: {event['message']}")


async def operation(
    ws: ClientConnection, op_id: str, query: str, variables: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """Subscribes `op_id` and yields its events until its `complete`."""
    payload = {"query": query, "variables": variables}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))
    while True:
        async with asyncio.timeout(60):
            frame = json.loads(await ws.recv())
        if frame.get("id") != op_id:
            continue
        if frame["type"] == "complete":
            return
        yield answer_event(frame)


async def resume_across(http: httpx.AsyncClient, urls: Sequence[str], token: str) -> str:
    """An answer started on `urls[0]` whose socket drops after `DROP_AFTER` tokens, resumed
    with `answerStream` on `urls[-1]`: the events after the last `seq` received, numbered on,
    to `AnswerDone`, and the text stored (`conversation` through `urls[-1]`) is what the two
    streams delivered together. Returns a line saying so.

    Raises:
        RuntimeError: any of that does not hold.
    """
    ws = await open_socket(urls[0], token)
    first: list[dict[str, Any]] = []
    try:
        async for event in operation(ws, "resume", SEQUENCED_ANSWER, {"question": QUESTION}):
            first.append(event)
            if len(first) > DROP_AFTER or event["__typename"] in ("AnswerDone", "AnswerError"):
                break
    finally:
        await ws.close()
    sources, after = first[0], first[-1]["seq"]
    if sources["__typename"] != "AnswerSources" or len(first) != DROP_AFTER + 1:
        raise RuntimeError(f"resume: the first stream was {first}")
    ws = await open_socket(urls[-1], token)
    variables = {"messageId": sources["messageId"], "afterSeq": after}
    try:
        rest = [e async for e in operation(ws, "rest", ANSWER_STREAM, variables)]
    finally:
        await ws.close()
    seqs = [e["seq"] for e in rest]
    if not rest or seqs != list(range(after + 1, after + 1 + len(rest))):
        raise RuntimeError(f"resume: answerStream after {after} gave seqs {seqs}")
    if rest[-1]["__typename"] != "AnswerDone":
        raise RuntimeError(f"resume: answerStream ended with {rest[-1]}")
    delivered = token_text(first) + token_text(rest)
    data = await GraphQLClient(http, urls[-1]).data(
        CONVERSATION, {"id": sources["conversationId"]}, token=token
    )
    answer = data["conversation"]["messages"][-1]
    if (answer["status"], answer["content"]) != ("complete", delivered):
        raise RuntimeError(f"resume: stored {answer}, delivered {delivered!r}")
    return (
        f"resume across replicas: {DROP_AFTER} tokens on one replica, the socket dropped, "
        f"{len(rest)} events after seq {after} by answerStream on another; stored text = "
        "both streams together"
    )


async def client(
    http: httpx.AsyncClient, url: str, token: str, deadline: float, result: Result, n: int
) -> None:
    """Rounds of search then answer against `url` until `deadline` (monotonic)."""
    gql = GraphQLClient(http, url)
    ws = await open_socket(url, token)
    try:
        rounds = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                body = await gql.execute(SEARCH, {"q": QUESTION}, token=token)
                if body.get("errors"):
                    raise RuntimeError(json.dumps(body["errors"])[:300])
                rounds += 1
                await one_answer(ws, f"{n}-{rounds}")
            except RuntimeError as exc:
                result.errors.append(str(exc))
                continue
            result.rounds.append((time.perf_counter() - started) * 1000)
    finally:
        await ws.close()


async def measure(
    urls: Sequence[str], tokens: Sequence[str], clients: int, duration: float, result: Result
) -> None:
    """`clients` clients for `duration` seconds, client i on `urls[i % len(urls)]` as user
    `tokens[i % len(tokens)]`."""
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.monotonic()
        deadline = started + duration
        await asyncio.gather(
            *(
                client(http, urls[i % len(urls)], tokens[i % len(tokens)], deadline, result, i)
                for i in range(clients)
            )
        )
        result.seconds = time.monotonic() - started


async def run(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (Debian: apt-get install redis-server)")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-replicas-"))
    pg = start_embedded(folder / "pg", database="bench", delete_on_stop=True)
    smtp = SmtpSink().start()
    results: list[Result] = []
    try:
        with redis_server(folder) as redis_url:
            ollama_port = free_port()
            ollama_url = f"http://127.0.0.1:{ollama_port}"
            settings = {
                "DATABASE_URL": pg.url,
                "DATA_DIR": str(folder / "data"),
                "OLLAMA_URL": ollama_url,
                "JWT_SECRET": "replicas-" + "x" * 40,
                "PASSWORD_HASH_PROFILE": "CHEAPEST",
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(smtp.port),
                "PARSE_PROCESSES": "0",
                "LOG_FORMAT": "json",
                "WORKER_IN_PROCESS": "false",
                **as_environment(raised_limits()),
                "RATE_LIMIT_STORAGE_URI": redis_url,
            }
            env = app_environment(settings)
            migrate = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rag_gql.cli", "migrate", env=env, cwd=folder
            )
            if await migrate.wait() != 0:
                raise RuntimeError("rag-gql migrate failed")
            standin = [
                *("tests.support.ollama_standin", "--port", str(ollama_port)),
                *("--token-delay", str(args.token_delay), "--log-level", "warning"),
            ]
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(
                    running(
                        standin,
                        ready_url=f"{ollama_url}/api/version",
                        log=folder / "ollama.log",
                        cwd=ROOT,
                        timeout=30,
                    )
                )
                # The worker has no HTTP listener: its operations listener answers /healthz.
                worker_port = free_port()
                worker_env = {**env, "METRICS_PORT": str(worker_port)}
                await stack.enter_async_context(
                    running(
                        ["rag_gql.cli", "worker"],
                        ready_url=f"http://127.0.0.1:{worker_port}/healthz",
                        log=folder / "worker.log",
                        cwd=folder,
                        env=worker_env,
                        timeout=120,
                    )
                )
                tokens: list[str] = []
                resumed: str | None = None
                for count in args.replicas:
                    async with AsyncExitStack() as servers:
                        urls = []
                        for n in range(count):
                            port = free_port()
                            serve = ["rag_gql.cli", "serve", "--port", str(port)]
                            await servers.enter_async_context(
                                running(
                                    [*serve, "--log-level", "warning"],
                                    ready_url=f"http://127.0.0.1:{port}/healthz",
                                    log=folder / f"serve-{count}-{n}.log",
                                    cwd=folder,
                                    env=env,
                                    timeout=120,
                                )
                            )
                            urls.append(f"http://127.0.0.1:{port}")
                        if not tokens:
                            tokens = await set_up_users(urls[0], smtp, args.users)
                        result = Result(count)
                        await measure(urls, tokens, args.clients, args.duration, result)
                        results.append(result)
                        if count > 1 and resumed is None:
                            async with httpx.AsyncClient(timeout=60) as http:
                                try:
                                    resumed = await resume_across(http, urls, tokens[0])
                                except (RuntimeError, AssertionError) as exc:
                                    result.errors.append(str(exc)[:300])
                                    resumed = "resume across replicas: FAILED"
    finally:
        smtp.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
    cpus = os.cpu_count()
    print(
        f"{args.clients} clients, {args.users} users, {args.duration:.0f} s per configuration, "
        f"stand-in {args.token_delay * 1000:.0f} ms/token, {cpus} CPUs (shared by everything); "
        "one round = search + streamed answer; rate limits and per-user caps raised"
    )
    header = ("replicas", "rounds", "rounds/s", "p50 ms", "p95 ms", "errors")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, WIDTHS, strict=True)))
    for result in results:
        print(result.row())
        for error in sorted(set(result.errors))[:5]:
            print(f"    {error}")
    if resumed is not None:
        print(resumed)
    return 1 if any(result.errors for result in results) else 0


async def set_up_users(url: str, smtp: SmtpSink, count: int) -> list[str]:
    """Signs `count` users up through `url`, each with a document READY; their tokens."""
    async with httpx.AsyncClient(timeout=60) as http:
        gql = GraphQLClient(http, url)
        tokens = []
        for i in range(count):
            token = await sign_up(gql, smtp.inbox, f"replica{i}@example.com")
            response = await gql.upload(f"notes-{i}.md", document(i), token=token)
            status = response.json()["data"]["uploadDocument"]["status"]
            if status != "READY":
                raise RuntimeError(f"user {i}'s document is {status}")
            tokens.append(token)
        return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--replicas",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 1],
        help="API processes of each configuration, in order (default 1,2,1: the second 1 "
        "shows how much a shared machine drifted meanwhile)",
    )
    parser.add_argument("--users", type=int, default=4, help="users the clients act as")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per configuration")
    parser.add_argument(
        "--token-delay", type=float, default=0.005, help="the stand-in's seconds per token"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
