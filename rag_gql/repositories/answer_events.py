"""An answer's stored events and its message while it streams (row-level security applies:
run inside the workspace). `services.answer_runs` writes and replays them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import AnswerEvent, Conversation, Message

CHANNEL = "rag_gql_answer"
"""The `NOTIFY` channel of answers' progress. A payload is a pointer, never text:
`{"message_id": ..., "seq": ...}` (far below PostgreSQL's 8000-byte limit); listeners read
the events themselves."""
STREAMING = "streaming"
"""`message.status` while the answer's run is writing it."""


async def owned_answer(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    message_id: uuid.UUID,
) -> Message | None:
    """The caller's answer (an assistant message in one of the caller's conversations, the
    rule of `conversations.get`), or None, also when it is someone else's."""
    owner = (
        Conversation.user_id == user_id
        if user_id is not None
        else Conversation.api_key_id == api_key_id
    )
    stmt = (
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Message.id == message_id,
            Message.workspace_id == workspace_id,
            Message.role == "assistant",
            Conversation.workspace_id == workspace_id,
            owner,
        )
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def after(
    session: AsyncSession, *, workspace_id: uuid.UUID, message_id: uuid.UUID, seq: int
) -> list[AnswerEvent]:
    """The answer's batches holding events after `seq`, in order."""
    stmt = (
        select(AnswerEvent)
        .where(
            AnswerEvent.workspace_id == workspace_id,
            AnswerEvent.message_id == message_id,
            AnswerEvent.last_seq > seq,
        )
        .order_by(AnswerEvent.seq)
    )
    return list((await session.execute(stmt)).scalars())


async def any_stored(
    session: AsyncSession, *, workspace_id: uuid.UUID, message_id: uuid.UUID
) -> bool:
    """Whether the answer has any stored event (answers stored before events were have none)."""
    stmt = select(AnswerEvent.seq).where(
        AnswerEvent.workspace_id == workspace_id, AnswerEvent.message_id == message_id
    )
    return bool((await session.execute(select(stmt.exists()))).scalar())


def batch(
    *,
    workspace_id: uuid.UUID,
    message_id: uuid.UUID,
    seq: int,
    last_seq: int,
    kind: str,
    payload: dict[str, Any],
) -> AnswerEvent:
    """A row of events `seq`..`last_seq` (added with `add`)."""
    return AnswerEvent(
        workspace_id=workspace_id,
        message_id=message_id,
        seq=seq,
        last_seq=last_seq,
        kind=kind,
        payload=payload,
    )


async def add(session: AsyncSession, rows: Sequence[AnswerEvent]) -> None:
    """Stores event batches and announces the last one (delivered at commit)."""
    session.add_all(rows)
    await session.flush()
    last = max(rows, key=lambda row: row.last_seq)
    await notify(session, message_id=last.message_id, seq=last.last_seq)


async def notify(session: AsyncSession, *, message_id: uuid.UUID, seq: int) -> None:
    """`pg_notify` on `CHANNEL` that the answer has events up to `seq` (sent at commit)."""
    payload = json.dumps({"message_id": str(message_id), "seq": seq})
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload}
    )


async def append_text(
    session: AsyncSession, *, workspace_id: uuid.UUID, message_id: uuid.UUID, text_: str
) -> bool:
    """Appends to a streaming answer's text; False when it is no longer streaming (or gone)."""
    stmt = (
        update(Message)
        .where(
            Message.workspace_id == workspace_id,
            Message.id == message_id,
            Message.status == STREAMING,
        )
        .values(content=Message.content + text_)
        .returning(Message.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def finish(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    message_id: uuid.UUID,
    values: dict[str, Any],
) -> bool:
    """Sets a streaming answer's final `values` (status, text, citations, usage) and marks
    its conversation active; False when it is no longer streaming (or gone)."""
    stmt = (
        update(Message)
        .where(
            Message.workspace_id == workspace_id,
            Message.id == message_id,
            Message.status == STREAMING,
        )
        .values(**values)
        .returning(Message.conversation_id)
    )
    conversation_id = (await session.execute(stmt)).scalar_one_or_none()
    if conversation_id is None:
        return False
    await session.execute(
        update(Conversation)
        .where(Conversation.workspace_id == workspace_id, Conversation.id == conversation_id)
        .values(updated_at=func.now())
    )
    return True


async def interrupt_lost(
    session: AsyncSession, *, workspace_id: uuid.UUID, older_than: float
) -> list[uuid.UUID]:
    """Marks `interrupted` the workspace's answers still `streaming` that were started more
    than `older_than` seconds ago (their run cannot still be writing them); returns their ids.
    The text stored so far stays. A run that writes again after this finds its answer no
    longer streaming (`append_text`, `finish`) and stops."""
    stmt = (
        update(Message)
        .where(
            Message.workspace_id == workspace_id,
            Message.role == "assistant",
            Message.status == STREAMING,
            Message.created_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than),
        )
        .values(status="interrupted")
        .returning(Message.id)
    )
    return list((await session.execute(stmt)).scalars())


async def last_seq(session: AsyncSession, *, workspace_id: uuid.UUID, message_id: uuid.UUID) -> int:
    """The last stored event's `seq` of the answer (0 when none is stored)."""
    stmt = select(func.coalesce(func.max(AnswerEvent.last_seq), 0)).where(
        AnswerEvent.workspace_id == workspace_id, AnswerEvent.message_id == message_id
    )
    return int((await session.execute(stmt)).scalar_one())
