"""Caps on what runs at once that hold across every replica sharing one Redis.

`SharedSlots` is `quotas.Slots` (at most `limit` held per key, in this process) plus, when
`RATE_LIMIT_STORAGE_URI` is Redis, the same cap over all processes: each hold is a *lease*,
a member of the sorted set `rag-gql:slots:{name}:{key}` scored by its expiry in Redis's own
clock (`TIME`, so the replicas' clocks do not matter). Taking one is a Lua script, atomic:
drop the expired members, count the rest, add one if fewer than `limit`. A process refreshes
the leases it holds every third of `SHARED_SLOTS_LEASE_TTL` and removes each when it is given
back; a process that dies (`kill -9`, a lost host) stops refreshing, and its leases expire
after `SHARED_SLOTS_LEASE_TTL` seconds, so a crash never takes places forever.

Redis unreachable: a hold is granted on the per-process cap alone (logged as a warning), so an
outage of Redis degrades the caps to per process rather than refusing every stream; the rate
limits of `quotas.Quotas`, whose storage is the same Redis, fail instead.

Used for `MAX_ANSWER_STREAMS_PER_USER`, `WS_MAX_OPERATIONS_PER_USER`,
`MAX_WEBSOCKETS_PER_USER` and `MAX_WEBSOCKETS_PER_IP` (HTTP subscription streams count there
too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from rag_gql.config import Settings
from rag_gql.errors import RateLimited
from rag_gql.services.rate_limits import Slots

if TYPE_CHECKING:
    import coredis

log = logging.getLogger(__name__)

REDIS_SCHEMES = {"redis": "redis", "rediss": "rediss", "redis+unix": "unix"}
"""`RATE_LIMIT_STORAGE_URI` schemes (`limits`' names, with or without `async+`) whose server
also holds the leases, and coredis's name for each."""

CALL_TIMEOUT = 2.0
"""Seconds a lease operation may take before Redis counts as unreachable."""

_TAKE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
"""KEYS[1]: the set; ARGV: limit, TTL in ms, lease id. 1: taken, 0: the set is full."""

_REFRESH = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ms + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""
"""KEYS[1]: the set; ARGV: TTL in ms, then the lease ids still held (`XX`: a lease given back
meanwhile is not brought back)."""


class LeaseStoreError(Exception):
    """Redis did not answer a lease operation (unreachable, timed out, or an error reply)."""


class RedisLeases:
    """Leases in Redis, shared by every process that uses the same server.

    Example:
        `lease = await leases.take("answers", "user:1", limit=2)` is a lease id, or None when
        two are held already; `leases.give_back("answers", "user:1", lease)` frees it.
        `await leases.run()` (a task for the process's life) keeps held leases alive.
    """

    def __init__(self, client: coredis.Redis[bytes], *, ttl: float) -> None:
        """`ttl`: seconds a lease lives without a refresh."""
        # coredis is the `redis` extra: imported only when Redis is configured.
        from coredis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._client = client
        self._ttl_ms = max(1, round(ttl * 1000))
        self.ttl = ttl
        self._take = client.register_script(_TAKE)
        self._refresh = client.register_script(_REFRESH)
        self._held: dict[str, set[str]] = defaultdict(set)
        self._releases: set[asyncio.Task[None]] = set()

    @classmethod
    def from_uri(cls, uri: str, *, ttl: float) -> RedisLeases | None:
        """Leases in the Redis of `uri` (a `RATE_LIMIT_STORAGE_URI`); None for a storage
        that is not Redis (`memory://`: one process; others: logged, caps stay per process).
        """
        parts = urlsplit(uri.removeprefix("async+"))
        scheme = REDIS_SCHEMES.get(parts.scheme)
        if scheme is None:
            if parts.scheme != "memory":
                log.warning(
                    "RATE_LIMIT_STORAGE_URI is %s://: the caps on streams and connections at "
                    "once are counted per process (only Redis shares them)",
                    parts.scheme,
                )
            return None
        try:
            import coredis
        except ImportError as exc:
            raise ImportError(
                "RATE_LIMIT_STORAGE_URI is a Redis URI but the Redis client is not installed: "
                "pip install 'rag-gql[redis]'"
            ) from exc
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            urlunsplit(parts._replace(scheme=scheme)),
            connect_timeout=CALL_TIMEOUT,
            stream_timeout=CALL_TIMEOUT,
        )
        return cls(client, ttl=ttl)

    @staticmethod
    def _set(name: str, key: Hashable) -> str:
        return f"rag-gql:slots:{name}:{key}"

    async def take(self, name: str, key: Hashable, *, limit: int) -> str | None:
        """A new lease on one of `limit` places of `key` in `name`, or None if all are held.

        Raises:
            LeaseStoreError: Redis did not answer within `CALL_TIMEOUT` seconds, or failed.
        """
        lease = uuid.uuid4().hex
        redis_key = self._set(name, key)
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                taken = await self._take(keys=[redis_key], args=[limit, self._ttl_ms, lease])
        except self._errors as exc:
            raise LeaseStoreError(str(exc) or type(exc).__name__) from exc
        if taken != 1:
            return None
        self._held[redis_key].add(lease)
        return lease

    def give_back(self, name: str, key: Hashable, lease: str) -> None:
        """Frees `lease` now for this process's refreshes and soon in Redis (a background
        removal; if it fails, the lease expires after the TTL)."""
        redis_key = self._set(name, key)
        held = self._held.get(redis_key)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[redis_key]
        task = asyncio.get_running_loop().create_task(self._remove(redis_key, lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _remove(self, redis_key: str, *leases: str) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._client.zrem(redis_key, list(leases))
        except self._errors as exc:
            log.warning("could not give a lease back in Redis (it expires by itself): %s", exc)

    async def refresh(self) -> None:
        """Extends every lease this process holds by the TTL (failures are logged)."""
        for redis_key, leases in list(self._held.items()):
            if not leases:
                continue
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await self._refresh(keys=[redis_key], args=[self._ttl_ms, *leases])
            except self._errors as exc:
                log.warning("could not refresh the leases of %s in Redis: %s", redis_key, exc)

    async def run(self) -> None:
        """Refreshes the held leases every third of the TTL, until cancelled."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.refresh()

    async def aclose(self) -> None:
        """Waits for the removals under way, frees what is still held, closes the client."""
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        for redis_key, leases in list(self._held.items()):
            if leases:
                await self._remove(redis_key, *leases)
        self._held.clear()
        self._client.connection_pool.disconnect()


class SharedSlots:
    """`Slots` whose cap also holds across the processes sharing `leases` (see the module).

    Example:
        `async with slots.hold(caller_key(principal)): ...` raises `RateLimited` for the
        `limit + 1`-th holder of the key, wherever the other `limit` run.
    """

    def __init__(self, local: Slots, *, name: str, leases: RedisLeases | None) -> None:
        """`local`: the cap in this process; `name` keeps this cap's leases apart from the
        others' in Redis; `leases` None: the cap is this process's only."""
        self.local = local
        self.name = name
        self._leases = leases
        self._held: dict[Hashable, list[str | None]] = defaultdict(list)

    @property
    def limit(self) -> int:
        """The most held at once per key."""
        return self.local.limit

    @property
    def what(self) -> str:
        """What is held, for error messages ("answers running")."""
        return self.local.what

    @property
    def setting(self) -> str:
        """The setting that sets `limit`."""
        return self.local.setting

    @property
    def total(self) -> int:
        """Held now in this process, all keys together."""
        return self.local.total

    async def acquire(self, key: Hashable) -> None:
        """Holds one more for `key`, in this process and (with Redis) everywhere.

        Raises:
            RateLimited: `key` already holds `limit` here or across the replicas.
        """
        self.local.acquire(key)
        lease: str | None = None
        if self._leases is not None:
            try:
                lease = await self._leases.take(self.name, key, limit=self.limit)
            except LeaseStoreError as exc:
                log.warning(
                    "Redis unreachable: %s counted in this process only (%s)", self.name, exc
                )
            except BaseException:
                self.local.release(key)
                raise
            else:
                if lease is None:
                    self.local.release(key)
                    raise RateLimited(
                        f"Too many {self.what} at once (at most {self.limit}, {self.setting}, "
                        "on every server together); try again in 1 second, or when one has ended",
                        retry_after=1,
                    )
        self._held[key].append(lease)

    def release(self, key: Hashable) -> None:
        """Gives back one that `key` held (at once here; in Redis in the background)."""
        held = self._held.get(key)
        if not held:
            return
        lease = held.pop()
        if not held:
            del self._held[key]
        self.local.release(key)
        if lease is not None and self._leases is not None:
            self._leases.give_back(self.name, key, lease)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Holds one for `key` for the duration of the block (raises as `acquire`)."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    async def wait_idle(self) -> None:
        """Returns once nothing is held in this process (for a graceful shutdown)."""
        await self.local.wait_idle()


@asynccontextmanager
async def open_leases(settings: Settings) -> AsyncIterator[RedisLeases | None]:
    """The leases of `RATE_LIMIT_STORAGE_URI` (None unless Redis), refreshed while the block
    runs; on exit the refreshes stop and what is still held is freed."""
    leases = RedisLeases.from_uri(
        settings.rate_limit_storage_uri, ttl=settings.shared_slots_lease_ttl
    )
    if leases is None:
        yield None
        return
    refresher = asyncio.create_task(leases.run())
    try:
        yield leases
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await leases.aclose()


__all__ = ["LeaseStoreError", "RedisLeases", "SharedSlots", "open_leases"]
