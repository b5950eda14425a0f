"""Live document status and progress, across processes, from PostgreSQL `LISTEN/NOTIFY`.

Workers announce every change of a document's status or progress with `pg_notify` in the
transaction that makes it (`repositories.documents.set_state`). Each API process keeps ONE
listening connection and fans the notifications out to its subscribers, each of whom sees
only its own workspace's documents (and, when it asked, one document).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from rag_gql.repositories.documents import EVENTS_CHANNEL
from rag_gql.services.access import Principal

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER = 256
"""Events kept for a subscriber that reads slowly; older progress events are dropped first."""


@dataclass(frozen=True, slots=True)
class DocumentState:
    """A document's status and progress at one moment (pages/sections/row blocks)."""

    document_id: uuid.UUID
    workspace_id: uuid.UUID
    status: str
    pages_total: int
    pages_done: int
    chunks_done: int
    chunk_count: int
    error: str | None
    deleted: bool = False
    """The document was deleted (the state is its last one): nothing more will come."""

    @property
    def terminal(self) -> bool:
        """READY, FAILED or deleted: nothing more will happen without a new job."""
        return self.deleted or self.status in ("READY", "FAILED")

    @classmethod
    def from_payload(cls, payload: str) -> DocumentState:
        """Parses a notification payload.

        Raises:
            ValueError, KeyError: not a payload written by `set_state`.
        """
        data: dict[str, Any] = json.loads(payload)
        return cls(
            document_id=uuid.UUID(data["document_id"]),
            workspace_id=uuid.UUID(data["workspace_id"]),
            status=str(data["status"]),
            pages_total=int(data["pages_total"]),
            pages_done=int(data["pages_done"]),
            chunks_done=int(data["chunks_done"]),
            chunk_count=int(data["chunk_count"]),
            error=data.get("error"),
            deleted=bool(data.get("deleted", False)),
        )


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _connection: event.set()


@dataclass(eq=False, slots=True)
class _Subscriber:
    workspace_id: uuid.UUID
    document_id: uuid.UUID | None
    queue: asyncio.Queue[DocumentState]


class DocumentEvents:
    """One `LISTEN` connection per process, shared by every `documentEvents` subscription.

    The connection opens with the first subscriber and is re-opened (after a pause) when it
    drops; `aclose` ends it.
    """

    def __init__(self, dsn: str, *, retry_pause: float = 1.0) -> None:
        self._dsn = dsn
        self._retry_pause = retry_pause
        self._subscribers: set[_Subscriber] = set()
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(
        self, principal: Principal, document_id: uuid.UUID | None = None
    ) -> AsyncIterator[asyncio.Queue[DocumentState]]:
        """Yields a queue of the principal's workspace's document events (of one document
        when `document_id` is given), from the moment the listening connection is up."""
        subscriber = _Subscriber(
            principal.workspace_id, document_id, asyncio.Queue(SUBSCRIBER_BUFFER)
        )
        self._subscribers.add(subscriber)
        try:
            await self._ensure_listening()
            yield subscriber.queue
        finally:
            self._subscribers.discard(subscriber)

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._supervisor is None or self._supervisor.done():
                self._ready.clear()
                self._supervisor = asyncio.create_task(self._supervise())
        await self._ready.wait()

    async def _supervise(self) -> None:
        while True:
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("document events: cannot listen (%s); retrying", exc)
                await asyncio.sleep(self._retry_pause)
                continue
            closed = asyncio.Event()
            connection.add_termination_listener(_setter(closed))
            try:
                await connection.add_listener(EVENTS_CHANNEL, self._on_notify)
                self._connection = connection
                self._ready.set()
                await closed.wait()
                log.warning("document events: the listening connection dropped; reconnecting")
            finally:
                self._connection = None
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)
            await asyncio.sleep(self._retry_pause)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            state = DocumentState.from_payload(payload)
        except (ValueError, KeyError) as exc:
            log.warning("document events: ignoring a malformed notification (%s)", exc)
            return
        for subscriber in list(self._subscribers):
            if subscriber.workspace_id != state.workspace_id:
                continue
            if subscriber.document_id is not None and subscriber.document_id != state.document_id:
                continue
            if subscriber.queue.full():  # a slow reader: drop its oldest event, keep the news
                subscriber.queue.get_nowait()
            subscriber.queue.put_nowait(state)

    async def aclose(self) -> None:
        """Stops listening."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
