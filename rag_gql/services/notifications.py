"""One PostgreSQL `LISTEN` connection per channel and process, waking the waiters of a key.

The pattern of `services.document_events`: the connection opens with the first waiter, is
re-opened (after a pause) when it drops, and `aclose` ends it. Notifications sent while it is
down are lost to it, so a waiter must also look for itself now and then (`Waiter.wait` under a
timeout): a notification only says "look now", it carries no state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable

import asyncpg

log = logging.getLogger(__name__)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _connection: event.set()


class Waiter:
    """Woken by each notification of its key; `wait` returns when one came since the last
    `clear` (or the timeout passed)."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Marks a notification as come."""
        self._event.set()

    def clear(self) -> None:
        """Forgets the notifications so far (call it before looking)."""
        self._event.clear()

    async def wait(self) -> None:
        """Returns when a notification came since `clear` (under the caller's timeout)."""
        await self._event.wait()


class Listener:
    """`LISTEN channel` on its own connection to `dsn`; `key_of(payload)` tells whose waiters
    a notification wakes (None: nobody's)."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        key_of: Callable[[str], Hashable | None],
        *,
        retry_pause: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._key_of = key_of
        self._retry_pause = retry_pause
        self._waiters: dict[Hashable, set[Waiter]] = {}
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self, key: Hashable, *, ready_within: float) -> AsyncIterator[Waiter]:
        """Yields a waiter of `key`'s notifications, once the connection listens (or after
        `ready_within` seconds without it: the waiter's own looks then have to do)."""
        waiter = Waiter(key)
        self._waiters.setdefault(key, set()).add(waiter)
        try:
            async with self._lock:
                if self._supervisor is None or self._supervisor.done():
                    self._ready.clear()
                    self._supervisor = asyncio.create_task(self._supervise())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ready_within):
                    await self._ready.wait()
            yield waiter
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]

    async def _supervise(self) -> None:
        while True:
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("%s: cannot listen (%s); retrying", self._channel, exc)
                await asyncio.sleep(self._retry_pause)
                continue
            closed = asyncio.Event()
            connection.add_termination_listener(_setter(closed))
            try:
                await connection.add_listener(self._channel, self._on_notify)
                self._ready.set()
                # Whatever was missed while down: every waiter looks again.
                for waiters in list(self._waiters.values()):
                    for waiter in list(waiters):
                        waiter.wake()
                await closed.wait()
                log.warning("%s: the listening connection dropped; reconnecting", self._channel)
            finally:
                self._ready.clear()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)
            await asyncio.sleep(self._retry_pause)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        key = self._key_of(payload)
        for waiter in list(self._waiters.get(key, ())) if key is not None else ():
            waiter.wake()

    async def aclose(self) -> None:
        """Stops listening."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
