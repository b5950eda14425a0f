"""Live document status and progress, across processes, from PostgreSQL `LISTEN/NOTIFY`.

Workers announce every change of a document's status or progress with `pg_notify` in the
transaction that makes it (`repositories.documents.set_state`). Each API process keeps ONE
listening connection and fans the notifications out to its subscribers, each of whom sees
only its own workspace's documents (and, when it asked, one document).

Notifications sent while the listening connection is down are lost to it. So after every
reconnect each subscriber is sent, read from the database in its workspace (row-level
security applies), the current state of what it watches: its one document, or, for a
workspace's stream, every document it has had an event about (up to `TRACKED`, a deleted one
as `deleted`), every document not READY or FAILED, and every document changed since
`RESYNC_MARGIN` seconds before the drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from rag_gql.db import Database
from rag_gql.db.models import Document
from rag_gql.repositories import documents
from rag_gql.repositories.documents import EVENTS_CHANNEL
from rag_gql.services.access import Principal

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER = 256
"""Events kept for a subscriber that reads slowly; older progress events are dropped first."""
TRACKED = 4096
"""Documents a workspace's stream remembers the last state of, to resend after a reconnect."""
RESYNC_MARGIN = 300.0
"""Seconds before a drop from which changes are resent after the reconnect: a state written
by a transaction that began before the drop and committed after it carries the earlier time."""
RESYNC_LIMIT = 1000
"""Documents of a workspace resent after a reconnect besides those its streams remember (the
most recently changed; a subscriber keeps `SUBSCRIBER_BUFFER` of them anyway)."""


@dataclass(frozen=True, slots=True)
class DocumentState:
    """A document's status and progress at one moment (pages/sections/row blocks)."""

    document_id: uuid.UUID
    workspace_id: uuid.UUID
    status: str
    page_count: int
    """Pages (sections, row blocks) in the file: `Document.page_count` (GraphQL
    `DocumentEvent.pagesTotal`; `pages_total` in a notification's payload)."""
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
            page_count=int(data["pages_total"]),
            pages_done=int(data["pages_done"]),
            chunks_done=int(data["chunks_done"]),
            chunk_count=int(data["chunk_count"]),
            error=data.get("error"),
            deleted=bool(data.get("deleted", False)),
        )

    @classmethod
    def of(cls, doc: Document, *, deleted: bool = False) -> DocumentState:
        """The state of a document row as read now."""
        return cls(
            document_id=doc.id,
            workspace_id=doc.workspace_id,
            status=doc.status,
            page_count=doc.page_count,
            pages_done=doc.pages_done,
            chunks_done=doc.chunks_done,
            chunk_count=doc.chunk_count,
            error=doc.error,
            deleted=deleted,
        )


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _connection: event.set()


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscriber's events: `get` the next; `seen` records a state it got from elsewhere
    (the document read when it started), which a reconnect's resend starts from."""

    workspace_id: uuid.UUID
    document_id: uuid.UUID | None
    queue: asyncio.Queue[DocumentState] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_BUFFER)
    )
    last: OrderedDict[uuid.UUID, DocumentState] = field(default_factory=OrderedDict)
    """The last state it was sent of each document, least recent first (at most `TRACKED`)."""

    async def get(self) -> DocumentState:
        """Waits for the next event (cancelling the wait loses none)."""
        return await self.queue.get()

    def wants(self, state: DocumentState) -> bool:
        """True when `state` is of a document this subscriber may and wants to see."""
        return state.workspace_id == self.workspace_id and (
            self.document_id is None or self.document_id == state.document_id
        )

    def seen(self, state: DocumentState) -> None:
        """Remembers `state` as the last the subscriber has of its document."""
        self.last[state.document_id] = state
        self.last.move_to_end(state.document_id)
        if state.deleted:
            del self.last[state.document_id]  # nothing more will come of it
        while len(self.last) > TRACKED:
            self.last.popitem(last=False)

    def put(self, state: DocumentState) -> None:
        """Queues `state`; a slow reader's oldest event is dropped to make room."""
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(state)
        self.seen(state)


class DocumentEvents:
    """One `LISTEN` connection per process, shared by every `documentEvents` subscription.

    The connection opens with the first subscriber and is re-opened (after a pause) when it
    drops; then each subscriber gets the current state of what it watches (see the module),
    read through `db`. `aclose` ends it.
    """

    def __init__(self, dsn: str, *, db: Database, retry_pause: float = 1.0) -> None:
        self._dsn = dsn
        self._db = db
        self._retry_pause = retry_pause
        self._subscribers: set[Subscription] = set()
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._notified: set[uuid.UUID] | None = None
        """While a resend reads: the documents notified meanwhile (their news is newer)."""

    @contextlib.asynccontextmanager
    async def subscribe(
        self, principal: Principal, document_id: uuid.UUID | None = None
    ) -> AsyncIterator[Subscription]:
        """Yields the principal's workspace's document events (of one document when
        `document_id` is given), from the moment the listening connection is up."""
        subscriber = Subscription(principal.workspace_id, document_id)
        self._subscribers.add(subscriber)
        try:
            await self._ensure_listening()
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._supervisor is None or self._supervisor.done():
                self._ready.clear()
                self._supervisor = asyncio.create_task(self._supervise())
        await self._ready.wait()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        dropped_at: float | None = None
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
                if dropped_at is not None:
                    await self._resend(loop.time() - dropped_at + RESYNC_MARGIN)
                await closed.wait()
                log.warning("document events: the listening connection dropped; reconnecting")
            finally:
                self._connection = None
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)
            dropped_at = loop.time()
            await asyncio.sleep(self._retry_pause)

    async def _resend(self, changed_within: float) -> None:
        """Sends every subscriber the current state of what it watches (see the module),
        but for documents notified while reading, whose notification is as new."""
        self._notified = set()
        try:
            by_workspace: dict[uuid.UUID, list[Subscription]] = {}
            for subscriber in list(self._subscribers):
                by_workspace.setdefault(subscriber.workspace_id, []).append(subscriber)
            for workspace_id, subscribers in by_workspace.items():
                try:
                    states = await self._current(workspace_id, subscribers, changed_within)
                except Exception:  # the next reconnect tries again; subscribers keep going
                    log.exception("document events: cannot resend the current states")
                    continue
                for subscriber in subscribers:
                    if subscriber in self._subscribers:
                        self._resend_to(subscriber, states)
        finally:
            self._notified = None

    async def _current(
        self, workspace_id: uuid.UUID, subscribers: list[Subscription], changed_within: float
    ) -> dict[uuid.UUID, DocumentState]:
        """The workspace's documents its subscribers watch, by id, least recently changed
        first; one marked for deletion is `deleted`."""
        ids = {s.document_id for s in subscribers if s.document_id is not None}
        for subscriber in subscribers:
            if subscriber.document_id is None:
                ids.update(subscriber.last)
        async with self._db.transaction(workspace_id) as session:
            found = await documents.current_states(
                session,
                workspace_id=workspace_id,
                document_ids=ids,
                changed_within=changed_within
                if any(s.document_id is None for s in subscribers)
                else None,
                limit=RESYNC_LIMIT,
            )
        return {
            doc.id: DocumentState.of(doc, deleted=doc.delete_requested_at is not None)
            for doc in found
        }

    def _resend_to(self, subscriber: Subscription, states: dict[uuid.UUID, DocumentState]) -> None:
        notified = self._notified or set()
        watched = (
            [subscriber.document_id]
            if subscriber.document_id is not None
            else list(subscriber.last)
        )
        resent: list[DocumentState] = []
        for document_id in watched:
            state = states.get(document_id)
            if state is None:  # deleted in the gap: its last known state, as deleted
                last = subscriber.last.get(document_id)
                if last is None:
                    continue
                state = replace(last, deleted=True)
            resent.append(state)
        if subscriber.document_id is None:
            resent += [s for id_, s in states.items() if id_ not in subscriber.last]
        for state in resent:
            if state.document_id in notified or not subscriber.wants(state):
                continue
            if subscriber.last.get(state.document_id) == state:
                continue  # nothing it missed
            subscriber.put(state)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            state = DocumentState.from_payload(payload)
        except (ValueError, KeyError) as exc:
            log.warning("document events: ignoring a malformed notification (%s)", exc)
            return
        if self._notified is not None:
            self._notified.add(state.document_id)
        for subscriber in list(self._subscribers):
            if subscriber.wants(state):
                subscriber.put(state)

    async def aclose(self) -> None:
        """Stops listening."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
