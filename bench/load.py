"""Load test: simulated users doing login, search and streamed answers against the real server,
then many concurrent `answer` subscriptions on one process; prints latency percentiles, time
to first token (the app's and the Ollama stand-in's own), errors and the server's memory.

Usage:
    python bench/load.py                          # 200 users for 60 s, then 1,000 answers at once
    python bench/load.py --users 20 --duration 10 --concurrent 100     # a quick check

Runs on this machine, each part in its own process: `rag-gql serve` (uvicorn, its embedded
PostgreSQL in a temporary DATA_DIR), the Ollama stand-in (`python -m
tests.support.ollama_standin`, streaming one token every `--token-delay` seconds), and this
client (httpx for HTTP, websockets for `graphql-transport-ws`; an SMTP sink for the sign-up
codes). The rate limits and the per-user caps on live answers and subscriptions are raised
for the run (tests/support/limits.py) and the output says so: the load test measures the
server, not its limits. Passwords hash with `--hash-profile` (CHEAPEST unless told).

Phase 1 (`--users`, `--duration`): each user signs up and uploads a document of ~20 chunks
beforehand (not timed), then, until the deadline, logs in (at its start and every 5th round),
searches, and asks for an answer over its WebSocket, pausing an exponentially distributed
think time (mean `--think` seconds) between rounds. Phase 2 (`--concurrent`): that many
WebSockets (spread over the users), each one `answer` subscription, all sent at once: every
one must end with `AnswerDone` and `complete`. Its floor is the stand-in alone: as many chat
streams sent to it directly, at once. Exits 1 when any operation failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.accounts import LOGIN, PASSWORD, sign_up  # noqa: E402 - after sys.path
from tests.support.graphql_client import GraphQLClient  # noqa: E402
from tests.support.limits import as_environment, raised_limits  # noqa: E402
from tests.support.processes import app_environment, running  # noqa: E402
from tests.support.serving import free_port  # noqa: E402
from tests.support.smtp import SmtpSink  # noqa: E402

SEARCH = (
    "query($q: String!) { search(query: $q, k: 5) { score page snippet document { id filename } } }"
)
ANSWER = (
    "subscription($q: String!) { answer(question: $q, k: 4) { __typename "
    "... on AnswerToken { text } "
    "... on AnswerDone { completionTokens timeToFirstTokenMs totalMs } "
    "... on AnswerError { code message } } }"
)
TOPICS = (
    "margins page geometry layout paper size landscape header footer",
    "tables columns rows longtable tabularx alignment width rules",
    "fonts encoding family series shape size commands symbols",
    "bibliography citations natbib references author year numbers",
    "figures graphics rotation scaling placement floats captions",
    "verbatim listings spaces line breaks commands environments code",
    "cross references labels pages varioref sections equations",
    "lists enumerate itemize description spacing labels nesting",
)
QUESTIONS = tuple(
    f"How do I change the {words.split()[i]} and the {words.split()[i + 1]}?"
    for words in TOPICS
    for i in range(0, 6, 2)
)
OPERATIONS = ("login", "search", "answer")


def document_text(seed: int) -> str:
    """A Markdown document of ~7 KB (about 20 chunks at the default CHUNK_SIZE): a section per
    topic, sentences drawn from its words; the same seed gives the same text."""
    rng = random.Random(seed)
    sections = []
    for n, words in enumerate(TOPICS, 1):
        vocabulary = words.split()
        sentences = [
            " ".join(rng.choice(vocabulary) for _ in range(rng.randint(8, 16))).capitalize() + "."
            for _ in range(12)
        ]
        sections.append(f"## {n}. {vocabulary[0].title()}\n\n" + " ".join(sentences))
    return f"# Manual {seed}\n\n" + "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank `p`-th percentile (0 < p <= 100) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Stats:
    """Latencies in milliseconds by series (`login`, `search`, `answer`, `ttft`, ...), errors by
    operation, and the first few error messages."""

    ms: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def error(self, operation: str, message: str) -> None:
        self.errors[operation] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{operation}: {message[:300]}")

    def row(self, name: str, seconds: float | None = None) -> str:
        """`name  count  rate/s  p50  p95  p99  max` (ms), rate only with `seconds`."""
        values = self.ms[name]
        rate = f"{len(values) / seconds:8.1f}" if seconds else f"{'':8}"
        cells = (
            " ".join(f"{percentile(values, p):8.0f}" for p in (50, 95, 99))
            + f" {max(values, default=float('nan')):8.0f}"
        )
        return f"{name:26}{len(values):8}{rate} {cells}"


HEADER = f"{'':26}{'count':>8}{'per s':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)"


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux `/proc`); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def processes_of(folder: Path) -> list[int]:
    """The embedded PostgreSQL under `folder`: its postmaster (found by its `-D` argument in
    `/proc/*/cmdline`; pgserver detaches it from the server process) and every child of it."""
    parents: dict[int, list[int]] = defaultdict(list)
    roots = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        parents[ppid].append(int(entry.name))
        if str(folder).encode() in command and b"postgres" in command:
            roots.append(int(entry.name))
    found = list(roots)
    for pid in roots:
        found.extend(parents.get(pid, []))
    return found


@dataclass
class Memory:
    """Peak resident memory (MiB) of the server process and of its embedded PostgreSQL (the
    sum over its processes, each counting the shared buffers it touched), sampled every half
    second while `sample` runs."""

    pid: int
    folder: Path
    server_peak: float = 0.0
    postgres_peak: float = 0.0
    server_start: float = 0.0

    async def sample(self) -> None:
        self.server_start = rss_mib(self.pid)
        while True:
            self.server_peak = max(self.server_peak, rss_mib(self.pid))
            postgres = sum(rss_mib(child) for child in processes_of(self.folder))
            self.postgres_peak = max(self.postgres_peak, postgres)
            await asyncio.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """What `stack` started: the server's URL and pid, the stand-in's URL, the SMTP sink."""

    url: str
    pid: int
    ollama_url: str
    smtp: SmtpSink


@contextlib.asynccontextmanager
async def stack(args: argparse.Namespace, folder: Path) -> AsyncIterator[Stack]:
    """Starts the stand-in and the server (logs in `folder`), stops them on exit.

    Raises:
        RuntimeError: either did not start.
    """
    ollama_port, server_port, metrics_port = free_port(), free_port(), free_port()
    ollama_url = f"http://127.0.0.1:{ollama_port}"
    server_url = f"http://127.0.0.1:{server_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}"  # the operations listener: /readyz
    standin_args = [
        *("tests.support.ollama_standin", "--port", str(ollama_port)),
        *("--token-delay", str(args.token_delay), "--log-level", "warning"),
    ]
    smtp = SmtpSink().start()
    env = app_environment(
        {
            "DATA_DIR": str(folder / "data"),
            "OLLAMA_URL": ollama_url,
            "JWT_SECRET": "load-" + "x" * 40,
            "PASSWORD_HASH_PROFILE": args.hash_profile,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "PARSE_PROCESSES": "0",
            "LOG_FORMAT": "json",
            "METRICS_PORT": str(metrics_port),
            **as_environment(raised_limits()),
        }
    )
    serve_args = ["rag_gql.cli", "serve", "--port", str(server_port), "--log-level", "warning"]
    try:
        async with (
            running(
                standin_args,
                ready_url=f"{ollama_url}/api/version",
                log=folder / "ollama.log",
                cwd=ROOT,
                timeout=30,
            ),
            running(
                serve_args,
                ready_url=f"{metrics_url}/readyz",
                log=folder / "server.log",
                cwd=folder,  # no .env of the checkout
                env=env,
                timeout=120,
            ) as server,
        ):
            yield Stack(server_url, server.pid, ollama_url, smtp)
    finally:
        smtp.stop()


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


@dataclass
class User:
    email: str
    token: str


async def set_up_users(gql: GraphQLClient, smtp: SmtpSink, count: int) -> list[User]:
    """Signs `count` users up (20 at a time) and uploads a document for each; returns them
    once every document is READY.

    Raises:
        RuntimeError: a document ended FAILED.
    """
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> User:
        async with gate:
            email = f"load{i}@example.com"
            token = await sign_up(gql, smtp.inbox, email)
            response = await gql.upload(
                f"manual-{i}.md", document_text(i).encode(), token=token, wait=False
            )
            doc_id = response.json()["data"]["uploadDocument"]["id"]
        document = await gql.wait_for_document(doc_id, token=token, timeout=600)
        if document["status"] != "READY":
            raise RuntimeError(f"{email}'s document: {document}")
        return User(email, token)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def open_socket(base_url: str, token: str) -> ClientConnection:
    """A `graphql-transport-ws` socket, acknowledged.

    Raises:
        RuntimeError: the server did not acknowledge.
    """
    url = base_url.replace("http://", "ws://") + "/graphql"
    ws = await connect(
        url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=60, max_queue=None
    )
    await ws.send(
        json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    )
    reply = json.loads(await ws.recv())
    if reply.get("type") != "connection_ack":
        await ws.close()
        raise RuntimeError(f"no connection_ack: {reply}")
    return ws


@dataclass
class AnswerTiming:
    """One answer: client-side time to the first token and to `complete` (ms), the server's
    own `timeToFirstTokenMs`, and the tokens received."""

    ttft: float
    total: float
    server_ttft: float
    tokens: int


async def answer(ws: ClientConnection, op_id: str, question: str) -> AnswerTiming:
    """Runs one `answer` subscription on `ws` to its `complete`.

    Raises:
        RuntimeError: an `AnswerError` event, an `error` message, or no `AnswerDone`.
        websockets.exceptions.ConnectionClosed: the socket closed first (a dropped answer).
    """
    started = time.perf_counter()
    payload = {"query": ANSWER, "variables": {"q": question}}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))
    first: float | None = None
    done: dict[str, Any] | None = None
    tokens = 0
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("id") != op_id:
            continue
        if frame["type"] == "complete":
            break
        if frame["type"] == "error":
            raise RuntimeError(f"error message: {frame['payload']}")
        body = frame["payload"]
        if body.get("errors"):
            raise RuntimeError(f"errors: {body['errors']}")
        event = body["data"]["answer"]
        kind = event["__typename"]
        if kind == "AnswerToken":
            tokens += 1
            first = first or time.perf_counter()
        elif kind == "AnswerDone":
            done = event
        elif kind == "AnswerError":
            raise RuntimeError(f"AnswerError {event['code']}: {event['message']}")
    end = time.perf_counter()
    if done is None or first is None:
        raise RuntimeError(f"complete without AnswerDone or tokens ({tokens} tokens)")
    return AnswerTiming(
        (first - started) * 1000, (end - started) * 1000, done["timeToFirstTokenMs"], tokens
    )


async def graphql(
    http: httpx.AsyncClient, url: str, query: str, variables: dict[str, Any], token: str | None
) -> dict[str, Any]:
    """POSTs one operation; returns `data`.

    Raises:
        RuntimeError: a non-200 status or GraphQL errors.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await http.post(
        f"{url}/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    body = response.json() if response.status_code == 200 else {}
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    data: dict[str, Any] = body["data"]
    return data


async def timed(stats: Stats, name: str, work: Any) -> Any:
    """Awaits `work`, recording its milliseconds under `name`, or an error (returns None)."""
    started = time.perf_counter()
    try:
        result = await work
    except (RuntimeError, httpx.HTTPError, ConnectionClosed, OSError, TimeoutError) as exc:
        stats.error(name, f"{type(exc).__name__}: {exc}")
        return None
    stats.ms[name].append((time.perf_counter() - started) * 1000)
    return result


async def simulated_user(
    user: User, url: str, http: httpx.AsyncClient, deadline: float, think: float, stats: Stats
) -> None:
    """Rounds of (login every 5th round) search, answer and a think time, until `deadline`."""
    rng = random.Random(user.email)
    ws = await timed(stats, "connect", open_socket(url, user.token))
    if ws is None:
        return
    try:
        rounds = 0
        while time.monotonic() < deadline:
            if rounds % 5 == 0:
                variables = {"e": user.email, "p": PASSWORD}
                await timed(stats, "login", graphql(http, url, LOGIN, variables, None))
            question = rng.choice(QUESTIONS)
            await timed(stats, "search", graphql(http, url, SEARCH, {"q": question}, user.token))
            timing = await timed(stats, "answer", answer(ws, str(rounds), question))
            if isinstance(timing, AnswerTiming):
                stats.ms["answer: first token"].append(timing.ttft)
                stats.ms["answer: server TTFT"].append(timing.server_ttft)
            rounds += 1
            await asyncio.sleep(min(rng.expovariate(1 / think), deadline - time.monotonic()))
    finally:
        await ws.close()


async def concurrent_answers(
    url: str, users: list[User], count: int, stats: Stats
) -> tuple[int, int, float]:
    """Opens `count` sockets (100 at a time), then starts one `answer` on each at once.

    Returns (answers completed, answers dropped: the socket closed first, seconds from the
    first subscribe to the last complete).
    """
    gate = asyncio.Semaphore(100)

    async def open_one(i: int) -> ClientConnection | None:
        async with gate:
            ws: ClientConnection | None = await timed(
                stats, "connect", open_socket(url, users[i % len(users)].token)
            )
            return ws

    sockets = await asyncio.gather(*(open_one(i) for i in range(count)))
    dropped = 0

    async def run_one(i: int, ws: ClientConnection) -> None:
        nonlocal dropped
        started = time.perf_counter()
        try:
            timing = await answer(ws, "1", QUESTIONS[i % len(QUESTIONS)])
        except ConnectionClosed as exc:
            dropped += 1
            stats.error("answer", f"dropped: {exc}")
            return
        except RuntimeError as exc:
            stats.error("answer", str(exc))
            return
        finally:
            await ws.close()
        stats.ms["answer"].append((time.perf_counter() - started) * 1000)
        stats.ms["answer: first token"].append(timing.ttft)
        stats.ms["answer: server TTFT"].append(timing.server_ttft)

    started = time.perf_counter()
    await asyncio.gather(*(run_one(i, ws) for i, ws in enumerate(sockets) if ws is not None))
    return len(stats.ms["answer"]), dropped, time.perf_counter() - started


async def standin_floor(ollama_url: str, count: int) -> list[float]:
    """Milliseconds to the first token of `count` chat streams sent to the stand-in at once,
    with a prompt like the app's (a source [1] of ~25 words): its own time to first token."""
    source = " ".join(document_text(0).split()[10:60])
    messages = [
        {"role": "system", "content": "Answer from the sources and cite them as [n]."},
        {"role": "user", "content": f"Sources:\n[1] {source}\n\nQuestion: {QUESTIONS[0]}"},
    ]
    body = {"model": "llama3.2", "messages": messages, "stream": True}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    ttfts: list[float] = []
    async with httpx.AsyncClient(base_url=ollama_url, timeout=300, limits=limits) as http:

        async def one() -> None:
            started = time.perf_counter()
            async with http.stream("POST", "/api/chat", json=body) as response:
                lines = response.aiter_lines()
                await anext(lines)
                ttfts.append((time.perf_counter() - started) * 1000)
                async for _line in lines:
                    pass

        await asyncio.gather(*(one() for _ in range(count)))
    return ttfts


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def ttft_table(app: Sequence[float], floor: Sequence[float]) -> str:
    """The app's time to first token, the stand-in's own, and the difference, by percentile."""
    lines = [f"{'time to first token (ms)':34}{'p50':>8}{'p95':>8}{'p99':>8}"]
    for name, values in (("through rag-gql (client)", app), ("stand-in alone (floor)", floor)):
        cells = "".join(f"{percentile(values, p):8.0f}" for p in (50, 95, 99))
        lines.append(f"{name:34}{cells}")
    added = "".join(f"{percentile(app, p) - percentile(floor, p):8.0f}" for p in (50, 95, 99))
    lines.append(f"{'added by rag-gql':34}{added}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-load-"))
    failed = 0
    async with stack(args, folder) as started_stack:
        url, pid, ollama_url = started_stack.url, started_stack.pid, started_stack.ollama_url
        smtp = started_stack.smtp
        # uvicorn closes a keep-alive connection idle for 5 s; a client that reuses one at
        # that moment gets a ReadError, so the client lets them go first.
        limits = httpx.Limits(
            max_connections=args.users + 50, max_keepalive_connections=None, keepalive_expiry=2
        )
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            memory = Memory(pid, folder)
            sampler = asyncio.create_task(memory.sample())
            print(
                f"server {url} (pid {pid}, embedded PostgreSQL), Ollama stand-in {ollama_url} "
                f"({args.token_delay * 1000:.0f} ms/token), {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.2f}"
            )
            print(
                "rate limits raised to 1000000/minute and caps on live answers and subscriptions "
                f"to 1000000 for this run; PASSWORD_HASH_PROFILE={args.hash_profile}"
            )
            started = time.perf_counter()
            users = await set_up_users(GraphQLClient(http, url), smtp, args.users)
            print(
                f"set-up: {len(users)} users signed up, one document each READY, in "
                f"{time.perf_counter() - started:.1f} s; server RSS {rss_mib(pid):.0f} MiB"
            )

            if args.duration > 0:
                stats = Stats()
                deadline = time.monotonic() + args.duration
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        simulated_user(user, url, http, deadline, args.think, stats)
                        for user in users
                    )
                )
                elapsed = time.perf_counter() - started
                total = sum(len(stats.ms[name]) for name in OPERATIONS)
                print(
                    f"\nphase 1: {len(users)} users for {elapsed:.1f} s (think time mean "
                    f"{args.think:g} s): {total} operations, {total / elapsed:.1f}/s; "
                    f"errors: {sum(stats.errors.values())} {dict(stats.errors)}"
                )
                print(HEADER)
                for name in (*OPERATIONS, "answer: first token", "answer: server TTFT"):
                    print(stats.row(name, elapsed if name in OPERATIONS else None))
                floor = await standin_floor(ollama_url, 20)
                print(
                    ttft_table(stats.ms["answer: first token"], floor).replace(
                        "stand-in alone (floor)", "stand-in alone, 20 at once"
                    )
                )
                print(
                    f"server RSS: {memory.server_start:.0f} MiB after set-up, peak "
                    f"{memory.server_peak:.0f} MiB; embedded PostgreSQL peak "
                    f"{memory.postgres_peak:.0f} MiB"
                )
                for example in stats.examples:
                    print("  " + example)
                failed += sum(stats.errors.values())

            if args.concurrent > 0:
                stats = Stats()
                memory.server_peak = memory.postgres_peak = 0.0
                completed, dropped, seconds = await concurrent_answers(
                    url, users, args.concurrent, stats
                )
                print(
                    f"\nphase 2: {args.concurrent} answer subscriptions at once, one socket "
                    f"each: {completed} completed, {dropped} dropped, "
                    f"{sum(stats.errors.values())} errors, in {seconds:.1f} s"
                )
                print(HEADER)
                for name in ("connect", "answer", "answer: first token", "answer: server TTFT"):
                    print(stats.row(name))
                floor = await standin_floor(ollama_url, args.concurrent)
                print(
                    ttft_table(stats.ms["answer: first token"], floor).replace(
                        "stand-in alone (floor)", f"stand-in alone, {args.concurrent} at once"
                    )
                )
                print(
                    f"server RSS peak {memory.server_peak:.0f} MiB; embedded PostgreSQL peak "
                    f"{memory.postgres_peak:.0f} MiB"
                )
                for example in stats.examples:
                    print("  " + example)
                failed += sum(stats.errors.values()) + args.concurrent - completed
            sampler.cancel()
            print(f"\nload average at the end {os.getloadavg()[0]:.2f}; logs in {folder}")
    shutil.rmtree(folder / "data", ignore_errors=True)  # the database; the logs stay
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200, help="simulated users (default 200)")
    parser.add_argument("--duration", type=float, default=60, help="phase 1 seconds (60)")
    parser.add_argument("--think", type=float, default=2.0, help="mean think time, s (2)")
    parser.add_argument(
        "--concurrent", type=int, default=1000, help="phase 2 answers at once (1000; 0 skips)"
    )
    parser.add_argument(
        "--token-delay", type=float, default=0.02, help="stand-in seconds per token (0.02)"
    )
    parser.add_argument(
        "--hash-profile",
        default="CHEAPEST",
        choices=("CHEAPEST", "RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY"),
        help="PASSWORD_HASH_PROFILE of the server (default CHEAPEST: logins cost no Argon2)",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
