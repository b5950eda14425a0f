"""Durable answers: a run per answer, independent of the client that asked, replayable and
followable from any process.

`AnswerRuns.start` stores the question and the answer's message (`streaming`) with its
sources (event 1) in one transaction, then drives the rest of the answer in a task of its
own: its tokens are published at once to followers in this process (`Run.follow`) and stored
in batches (every `FLUSH_SECONDS` or `FLUSH_TOKENS` tokens: the message's text grows and an
`answer_event` row holds the batch, with a `pg_notify` pointer); its end is stored with the
message's final state in one transaction, then published. A client that leaves does not stop
the run (unless ANSWER_CONTINUE_ON_DISCONNECT=false, `GenerationService.answer`); it ends at
its end, past `ANSWER_MAX_SECONDS`, by `stop`, or at shutdown (`aclose`) — the last three as
`interrupted` with a `Failed(INTERRUPTED)` end (or the code `stop` gives).

`AnswerRuns.stream` is `answerStream`: the events after `after_seq` of one of the caller's
answers — from the run itself when it runs in this process, else from the stored batches,
read again on each notification (`services.notifications`) and every `POLL_SECONDS`, until
the end. An answer still `streaming` past its run's longest life (its process died) ends
there with `Failed(INTERRUPTED)`.

`AnswerRuns.sweep_lost` stores that end: every API process sweeps, at start-up and every
`SWEEP_SECONDS` (`sweep_lost_every`, in the app's lifespan), the answers of every workspace
still `streaming` `ANSWER_MAX_SECONDS` + `LOST_MARGIN` after they started, marking each
`interrupted` with its text as stored and storing its `Failed(INTERRUPTED)` end (announced
like any other), in one transaction per workspace; replicas sweeping at once mark each answer
once (the update's condition is checked again under the row's lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.db.models import Message
from rag_gql.errors import InvalidInput, NotFound
from rag_gql.repositories import answer_events, conversations, workspaces
from rag_gql.services.access import Action, Principal
from rag_gql.services.answers import (
    INTERRUPTED,
    AnswerEvent,
    Citation,
    Done,
    Failed,
    Sequenced,
    Sources,
    Token,
    citation,
    from_batch,
    payload,
    tokens_payload,
)
from rag_gql.services.notifications import Listener
from rag_gql.services.pgtext import replace_nul

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
"""Most seconds a streamed token waits before it is stored (and other processes see it)."""
FLUSH_TOKENS = 32
"""Tokens stored at once at most: a fast stream is stored in batches of this many."""
POLL_SECONDS = 2.0
"""Seconds between looks at the stored events of an answer followed from another process,
when no notification came (one lost while the listening connection was down)."""
LOST_MARGIN = 60.0
"""Seconds past ANSWER_MAX_SECONDS after which an answer still `streaming` is taken as lost
(its process stopped without storing its end)."""
SWEEP_SECONDS = 300.0
"""Seconds between two sweeps of lost answers in an API process (`sweep_lost_every`)."""
LOST = "The answer's server stopped before the answer's end"


@dataclass(eq=False)
class Run:
    """One answer being written in this process: all its events so far, in memory."""

    principal: Principal
    message_id: uuid.UUID
    events: list[Sequenced] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    pending: list[Sequenced] = field(default_factory=list)
    """Tokens published and not yet stored, in order."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while a batch is stored: batches are stored one at a time, in order."""
    stop_reason: Failed | None = None
    gone: bool = False
    """The message was deleted (with its conversation) while running."""
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        """Its end has been published."""
        return bool(self.events) and self.events[-1].terminal

    def publish(self, event: AnswerEvent) -> Sequenced:
        """Numbers `event` and wakes the followers."""
        item = Sequenced(len(self.events) + 1, event)
        self.events.append(item)
        if isinstance(event, Token):
            self.parts.append(event.text)
            self.pending.append(item)
        if item.terminal:
            self._ended.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return item

    async def follow(self, after_seq: int, *, window: float = 0.0) -> AsyncIterator[Sequenced]:
        """The events after `after_seq`, as they come, up to the end.

        Consecutive tokens waiting together go as one `Token` (their texts joined, in order)
        numbered with the last one's `seq`. With `window` (seconds), the tokens after a token
        event wait until `window` after it for more to join them (the end does not wait: the
        tokens before it go at once, then the end); the first token never waits. Nothing is
        dropped or reordered: the texts of the tokens followed are the answer's text.
        """
        seen = after_seq
        loop = asyncio.get_running_loop()
        hold_until = -math.inf
        while True:
            changed = self._changed
            while seen < len(self.events):
                item = self.events[seen]
                if isinstance(item.event, Token) and not self.finished:
                    wait = hold_until - loop.time()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(wait):
                                await self._ended.wait()
                end = seen + 1
                while end < len(self.events) and isinstance(self.events[end].event, Token):
                    end += 1
                if isinstance(item.event, Token):
                    item = joined(self.events[seen:end])
                    seen = end
                    hold_until = loop.time() + window
                else:
                    seen += 1
                yield item
                if item.terminal:
                    return
            if self.finished:
                return
            await changed.wait()


def joined(items: list[Sequenced]) -> Sequenced:
    """Consecutive tokens as one: their texts joined in order, the last one's `seq`."""
    if len(items) == 1:
        return items[0]
    text = "".join(item.event.text for item in items if isinstance(item.event, Token))
    return Sequenced(items[-1].seq, Token(text))


def _message_key(payload_: str) -> Hashable | None:
    try:
        return uuid.UUID(json.loads(payload_)["message_id"])
    except (ValueError, KeyError, TypeError):
        log.warning("answer events: ignoring a malformed notification")
        return None


class AnswerRuns:
    """The answers running in this process, and `answerStream` over every process's."""

    def __init__(self, *, settings: Settings, db: Database, dsn: str) -> None:
        self._settings = settings
        self._db = db
        self._runs: dict[uuid.UUID, Run] = {}
        self._listener = Listener(dsn, answer_events.CHANNEL, _message_key)

    @property
    def running(self) -> int:
        """Runs of this process not finished yet."""
        return len(self._runs)

    async def start(
        self,
        principal: Principal,
        sources: Sources,
        rest: AsyncGenerator[AnswerEvent, None],
        *,
        on_end: Callable[[], None],
    ) -> Run:
        """Stores the question and the answer's start, then runs `rest` (the events after
        `sources`: tokens, then `Done` or `Failed`) in a task; `on_end` is called once the
        run has stored its end. The run's followers get `sources` as event 1.

        Raises:
            ServerBusy: the start could not be stored (nothing runs then; `rest` is closed).
        """
        try:
            await self._begin(principal, sources)
        except BaseException:
            await rest.aclose()
            raise
        run = Run(principal, sources.message_id)
        run.publish(sources)
        self._runs[run.message_id] = run
        run.task = asyncio.create_task(self._drive(run, rest, on_end))
        return run

    async def stop(self, message_id: uuid.UUID, reason: Failed) -> None:
        """Ends a run of this process with `reason` as its end (stored `interrupted`), and
        returns once that is stored. Nothing happens when it is not running here."""
        run = self._runs.get(message_id)
        if run is None or run.task is None or run.task.done():
            return
        if run.stop_reason is None:
            run.stop_reason = reason
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(run.task)

    async def aclose(self) -> None:
        """Stops every run (`interrupted`: the server stops), waits for them to store their
        end, and stops listening."""
        reason = Failed(INTERRUPTED, "The server stopped before the answer's end")
        await asyncio.gather(*(self.stop(mid, reason) for mid in list(self._runs)))
        await self._listener.aclose()

    # --- the run ------------------------------------------------------------------------------

    async def _begin(self, principal: Principal, sources: Sources) -> None:
        ws = principal.workspace_id
        question = Message(
            id=uuid.uuid4(),
            workspace_id=ws,
            conversation_id=sources.conversation_id,
            role="user",
            content=sources.question,
            status="complete",
            created_at=sources.asked_at,
        )
        answer = Message(
            id=sources.message_id,
            workspace_id=ws,
            conversation_id=sources.conversation_id,
            role="assistant",
            content="",
            status=answer_events.STREAMING,
            standalone_question=sources.standalone_question,
            sources=[
                {**citation(n, hit).as_json(), "score": hit.score}
                for n, hit in enumerate(sources.hits, start=1)
            ],
            citations=[],
            created_at=max(datetime.now(UTC), sources.asked_at),
        )
        kind, data = payload(sources)
        row = answer_events.batch(
            workspace_id=ws, message_id=answer.id, seq=1, last_seq=1, kind=kind, payload=data
        )
        async with self._db.transaction(ws) as session:
            await conversations.add_messages(session, [question, answer])
            await answer_events.add(session, [row])

    async def _drive(
        self, run: Run, rest: AsyncGenerator[AnswerEvent, None], on_end: Callable[[], None]
    ) -> None:
        end: Done | Failed | None = None
        flusher = asyncio.create_task(self._flush_every(run))
        try:
            async with contextlib.aclosing(rest):
                limit = self._settings.answer_max_seconds
                try:
                    async with asyncio.timeout(limit):
                        async for event in rest:
                            if isinstance(event, Token):
                                # PostgreSQL text cannot hold NUL.
                                run.publish(Token(replace_nul(event.text, "\ufffd")))
                                if len(run.pending) >= FLUSH_TOKENS:
                                    await asyncio.shield(self._flush(run))
                                if run.gone:
                                    return
                            elif isinstance(event, Done | Failed):
                                end = event
                                return
                except TimeoutError:
                    end = Failed(
                        INTERRUPTED,
                        f"The answer took longer than ANSWER_MAX_SECONDS ({limit:g} s)",
                    )
        except asyncio.CancelledError:
            end = run.stop_reason or Failed(INTERRUPTED, "The answer was stopped")
            raise
        except Exception:
            log.exception("answer run %s failed", run.message_id)
            end = Failed("INTERNAL_SERVER_ERROR", "The answer stopped on an internal error")
        finally:
            flusher.cancel()
            if end is None:
                end = Failed(INTERRUPTED, "The answer stopped before its end")
            try:
                if not run.gone:
                    await asyncio.shield(self._finish(run, end))
            finally:
                run.publish(end)
                self._runs.pop(run.message_id, None)
                on_end()

    async def _flush_every(self, run: Run) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await asyncio.shield(self._flush(run))

    async def _flush(self, run: Run) -> None:
        """Stores the tokens published since the last flush (one batch row, the text)."""
        async with run.lock:
            batch, run.pending = run.pending, []
            if not batch or run.gone:
                return
            texts = [item.event.text for item in batch if isinstance(item.event, Token)]
            ws = run.principal.workspace_id
            try:
                async with self._db.transaction(ws) as session:
                    alive = await answer_events.append_text(
                        session, workspace_id=ws, message_id=run.message_id, text_="".join(texts)
                    )
                    if alive:
                        row = answer_events.batch(
                            workspace_id=ws,
                            message_id=run.message_id,
                            seq=batch[0].seq,
                            last_seq=batch[-1].seq,
                            kind="tokens",
                            payload=tokens_payload(texts),
                        )
                        await answer_events.add(session, [row])
            except Exception:
                log.exception("answer run %s: cannot store a batch; retrying", run.message_id)
                run.pending[:0] = batch
                return
            if not alive:
                run.gone = True

    async def _finish(self, run: Run, end: Done | Failed) -> None:
        """Stores the last tokens, the end and the message's final state in one transaction."""
        async with run.lock:
            batch, run.pending = run.pending, []
            ws = run.principal.workspace_id
            end_seq = len(run.events) + 1
            rows = []
            if batch:
                texts = [item.event.text for item in batch if isinstance(item.event, Token)]
                rows.append(
                    answer_events.batch(
                        workspace_id=ws,
                        message_id=run.message_id,
                        seq=batch[0].seq,
                        last_seq=batch[-1].seq,
                        kind="tokens",
                        payload=tokens_payload(texts),
                    )
                )
            kind, data = payload(end)
            rows.append(
                answer_events.batch(
                    workspace_id=ws,
                    message_id=run.message_id,
                    seq=end_seq,
                    last_seq=end_seq,
                    kind=kind,
                    payload=data,
                )
            )
            done = end if isinstance(end, Done) else None
            if isinstance(end, Done):
                status = "complete"
            else:
                status = "interrupted" if run.stop_reason or end.code == INTERRUPTED else "failed"
            values = {
                "status": status,
                "content": "".join(run.parts),
                "citations": [c.as_json() for c in done.citations] if done else [],
                "prompt_tokens": done.prompt_tokens if done else None,
                "completion_tokens": done.completion_tokens if done else None,
                "time_to_first_token_ms": done.time_to_first_token_ms if done else None,
                "total_ms": done.total_ms if done else None,
            }
            try:
                async with self._db.transaction(ws) as session:
                    if await answer_events.finish(
                        session, workspace_id=ws, message_id=run.message_id, values=values
                    ):
                        await answer_events.add(session, rows)
            except Exception:
                log.exception("answer run %s: cannot store its end", run.message_id)

    # --- lost answers -------------------------------------------------------------------------

    async def sweep_lost(self) -> int:
        """Ends the lost answers of every workspace (see the module); returns how many."""
        older_than = self._settings.answer_max_seconds + LOST_MARGIN
        async with self._db.transaction() as session:
            workspace_ids = await workspaces.all_ids(session)
        swept = 0
        for ws in workspace_ids:
            async with self._db.transaction(ws) as session:
                lost = await answer_events.interrupt_lost(
                    session, workspace_id=ws, older_than=older_than
                )
                for message_id in lost:
                    seq = await answer_events.last_seq(
                        session, workspace_id=ws, message_id=message_id
                    )
                    kind, data = payload(Failed(INTERRUPTED, LOST))
                    row = answer_events.batch(
                        workspace_id=ws,
                        message_id=message_id,
                        seq=seq + 1,
                        last_seq=seq + 1,
                        kind=kind,
                        payload=data,
                    )
                    await answer_events.add(session, [row])
            for message_id in lost:
                log.warning("answer %s: its server stopped before its end: interrupted", message_id)
            swept += len(lost)
        return swept

    async def sweep_lost_every(self, interval: float = SWEEP_SECONDS) -> None:
        """`sweep_lost` now and every `interval` seconds, until cancelled (a failed sweep is
        logged and tried again at the next)."""
        while True:
            try:
                await self.sweep_lost()
            except Exception:
                log.exception("the sweep of lost answers failed; trying again later")
            await asyncio.sleep(interval)

    # --- answerStream -------------------------------------------------------------------------

    async def stream(
        self, principal: Principal, message_id: uuid.UUID, after_seq: int = 0
    ) -> AsyncGenerator[Sequenced, None]:
        """The events of the caller's answer `message_id` after `after_seq`, up to its end
        (nothing when `after_seq` is at or past it).

        Raises (before the first event):
            InvalidInput: `after_seq` is negative.
            NotFound: no such answer of the caller's (someone else's is not told apart).
        """
        principal.require(Action.READ)
        if after_seq < 0:
            raise InvalidInput("afterSeq must be 0 or more")
        ws = principal.workspace_id
        async with self._listener.subscribe(message_id, ready_within=POLL_SECONDS) as waiter:
            async with self._db.transaction(ws) as session:
                message = await answer_events.owned_answer(
                    session,
                    workspace_id=ws,
                    user_id=principal.user_id,
                    api_key_id=principal.api_key_id,
                    message_id=message_id,
                )
            if message is None:
                raise NotFound("Answer not found")
            run = self._runs.get(message_id)
            if run is not None:
                window = self._settings.answer_token_window_ms / 1000
                async for item in run.follow(after_seq, window=window):
                    yield item
                return
            seen = after_seq
            ended = False
            while True:
                waiter.clear()
                items, state = await self._stored(principal, message_id, seen)
                for item in items:
                    seen = item.seq
                    yield item
                    if item.terminal:
                        return
                if state is None:
                    yield Sequenced(seen + 1, Failed("NOT_FOUND", "The answer was deleted"))
                    return
                if state.status != answer_events.STREAMING:
                    if ended:
                        return  # its end was at or before `after_seq`
                    ended = True  # its end may have committed between the two reads: again
                    continue
                lost_at = state.created_at + timedelta(
                    seconds=self._settings.answer_max_seconds + LOST_MARGIN
                )
                if datetime.now(UTC) > lost_at:
                    yield Sequenced(seen + 1, Failed(INTERRUPTED, LOST))
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await waiter.wait()

    async def _stored(
        self, principal: Principal, message_id: uuid.UUID, seq: int
    ) -> tuple[list[Sequenced], Message | None]:
        """The stored events after `seq` and the message as read with them (None: gone)."""
        ws = principal.workspace_id
        async with self._db.transaction(ws) as session:
            # The batches first: the message read after them is as new or newer.
            rows = await answer_events.after(
                session, workspace_id=ws, message_id=message_id, seq=seq
            )
            message = await answer_events.owned_answer(
                session,
                workspace_id=ws,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                message_id=message_id,
            )
            if (
                not rows
                and message is not None
                and message.status != answer_events.STREAMING
                and not await answer_events.any_stored(
                    session, workspace_id=ws, message_id=message_id
                )
            ):
                items = _unrecorded(message)
                return [item for item in items if item.seq > seq], message
        items = [item for row in rows for item in from_batch(row) if item.seq > seq]
        return items, message


def _unrecorded(message: Message) -> list[Sequenced]:
    """The events of an answer stored before answers' events were: its sources are not
    known any more (an empty list), its text comes as one token."""
    events: list[AnswerEvent] = [
        Sources(
            hits=[],
            conversation_id=message.conversation_id,
            standalone_question=message.standalone_question or "",
            message_id=message.id,
        )
    ]
    if message.content:
        events.append(Token(message.content))
    if message.status == "complete":
        citations = [Citation.from_json(c) for c in message.citations]
        events.append(
            Done(
                message_id=message.id,
                citations=citations,
                grounded=bool(citations) or not message.sources,
                prompt_tokens=message.prompt_tokens or 0,
                completion_tokens=message.completion_tokens or 0,
                time_to_first_token_ms=message.time_to_first_token_ms or 0.0,
                total_ms=message.total_ms or 0.0,
            )
        )
    elif message.status == "failed":
        events.append(Failed("UPSTREAM_ERROR", "The answer failed"))
    else:
        events.append(Failed(INTERRUPTED, "The answer was interrupted"))
    return [Sequenced(seq, event) for seq, event in enumerate(events, start=1)]
