"""`SharedSlots` over a real `redis-server`: two lease stores stand for two replicas (each its
own client and refresher, as each process has); a store that stops refreshing stands for a
replica killed with `kill -9`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rag_gql.errors import RateLimited
from rag_gql.services.rate_limits import Slots
from rag_gql.services.shared_caps import RedisLeases, SharedSlots
from tests.support.redis import redis_server
from tests.support.serving import free_port


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


def slots(leases: RedisLeases | None, limit: int = 2) -> SharedSlots:
    local = Slots(limit, what="answers running", setting="MAX_ANSWER_STREAMS_PER_USER")
    return SharedSlots(local, name="answers", leases=leases)


@pytest.fixture
async def two(redis_url: str) -> AsyncIterator[tuple[RedisLeases, RedisLeases]]:
    a = RedisLeases.from_uri(redis_url, ttl=30)
    b = RedisLeases.from_uri(f"async+{redis_url}", ttl=30)
    assert a is not None and b is not None
    yield a, b
    await a.aclose()
    await b.aclose()


async def eventually_acquires(slot: SharedSlots, key: str, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            try:
                await slot.acquire(key)
                return
            except RateLimited:
                await asyncio.sleep(0.05)


async def test_the_cap_holds_across_replicas_and_a_release_frees_a_place(
    two: tuple[RedisLeases, RedisLeases],
) -> None:
    a, b = slots(two[0]), slots(two[1])
    await a.acquire("user:1")
    await b.acquire("user:1")
    with pytest.raises(RateLimited, match="on every server together") as refused:
        await b.acquire("user:1")
    assert refused.value.retry_after == 1
    assert "MAX_ANSWER_STREAMS_PER_USER" in str(refused.value)
    assert b.total == 1, "a refused hold keeps no local place"
    await b.acquire("user:2")  # another key has places of its own
    a.release("user:1")
    await eventually_acquires(b, "user:1", 5)
    assert (a.total, b.total) == (0, 3)


async def test_the_local_cap_still_applies_on_its_own(
    two: tuple[RedisLeases, RedisLeases],
) -> None:
    a = slots(two[0], limit=1)
    async with a.hold("user:1"):
        with pytest.raises(RateLimited, match="at most 1"):
            await a.acquire("user:1")
    assert a.total == 0


async def test_a_dead_replica_s_places_come_back_after_the_ttl(redis_url: str) -> None:
    dead, alive = (RedisLeases.from_uri(redis_url, ttl=0.6) for _ in range(2))
    assert dead is not None and alive is not None
    await slots(dead, limit=1).acquire("user:1")  # never refreshed nor given back: "killed"
    refresher = asyncio.create_task(alive.run())
    try:
        b = slots(alive, limit=1)
        with pytest.raises(RateLimited):
            await b.acquire("user:1")
        await eventually_acquires(b, "user:1", 5)
        # A lease outlives its TTL many times over while its process refreshes it.
        await asyncio.sleep(1.5)
        with pytest.raises(RateLimited):
            await slots(dead, limit=1).acquire("user:1")
        b.release("user:1")
        await eventually_acquires(slots(dead, limit=1), "user:1", 5)
    finally:
        refresher.cancel()
        await alive.aclose()
        await dead.aclose()


async def test_redis_unreachable_falls_back_to_the_cap_of_the_process() -> None:
    leases = RedisLeases.from_uri(f"redis://127.0.0.1:{free_port()}", ttl=30)
    assert leases is not None
    a = slots(leases, limit=1)
    await a.acquire("user:1")
    with pytest.raises(RateLimited, match="at most 1"):
        await a.acquire("user:1")
    a.release("user:1")
    assert a.total == 0
    await leases.aclose()


def test_only_redis_storage_shares_the_caps() -> None:
    assert RedisLeases.from_uri("memory://", ttl=30) is None
    assert RedisLeases.from_uri("async+memory://", ttl=30) is None
    assert RedisLeases.from_uri("memcached://127.0.0.1:11211", ttl=30) is None


def test_the_server_starts_without_the_optional_extras() -> None:
    """`pip install -e .` (no extras) then `rag-gql serve` must work: nothing the server imports
    at start needs the `redis`, `otel` or `eval` extras (coredis, opentelemetry, bm25s)."""
    blocked = ["coredis", "bm25s", "opentelemetry", "sentence_transformers"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # import raises ImportError\n"
        "import rag_gql.app, rag_gql.cli, rag_gql.resources, rag_gql.ingestion.worker\n"
        "from rag_gql.config import Settings\n"
        "from rag_gql.app import create_app\n"
        "create_app(Settings(_env_file=None))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
