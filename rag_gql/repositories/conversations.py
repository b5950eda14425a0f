"""Conversations and their messages (row-level security applies: run inside the workspace)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db.models import Conversation, Message


def _owned(
    workspace_id: uuid.UUID, user_id: uuid.UUID | None, api_key_id: uuid.UUID | None
) -> list[ColumnElement[bool]]:
    """Conversations belong to one caller: a user, or an API key."""
    owner = (
        Conversation.user_id == user_id
        if user_id is not None
        else Conversation.api_key_id == api_key_id
    )
    return [Conversation.workspace_id == workspace_id, owner]


async def add(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    title: str,
) -> Conversation:
    """Starts a conversation."""
    conversation = Conversation(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        user_id=user_id,
        api_key_id=api_key_id,
        title=title,
    )
    session.add(conversation)
    await session.flush()
    return conversation


async def get(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    conversation_id: uuid.UUID,
) -> Conversation | None:
    """Returns the caller's conversation, or None (also when it is someone else's)."""
    stmt = select(Conversation).where(
        Conversation.id == conversation_id, *_owned(workspace_id, user_id, api_key_id)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_page(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Conversation]:
    """The caller's conversations, most recently active first (keyset on updated_at, id)."""
    stmt = select(Conversation).where(*_owned(workspace_id, user_id, api_key_id))
    if before is not None:
        stmt = stmt.where(tuple_(Conversation.updated_at, Conversation.id) < tuple_(*before))
    stmt = stmt.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def any_newer(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    than: tuple[datetime, uuid.UUID],
) -> bool:
    """Whether the caller has a conversation before the keyset `than` in `list_page`'s order
    (more recently active)."""
    newer = select(Conversation.id).where(
        *_owned(workspace_id, user_id, api_key_id),
        tuple_(Conversation.updated_at, Conversation.id) > tuple_(*than),
    )
    return bool((await session.execute(select(newer.exists()))).scalar())


async def messages(
    session: AsyncSession, *, workspace_id: uuid.UUID, conversation_id: uuid.UUID
) -> list[Message]:
    """The conversation's messages, oldest first."""
    return await messages_of(session, workspace_id=workspace_id, conversation_ids=[conversation_id])


async def messages_of(
    session: AsyncSession, *, workspace_id: uuid.UUID, conversation_ids: Sequence[uuid.UUID]
) -> list[Message]:
    """The messages of several conversations, each one's oldest first."""
    stmt = (
        select(Message)
        .where(Message.workspace_id == workspace_id, Message.conversation_id.in_(conversation_ids))
        .order_by(Message.conversation_id, Message.created_at, Message.id)
    )
    return list((await session.execute(stmt)).scalars())


async def add_messages(session: AsyncSession, rows: Sequence[Message]) -> None:
    """Stores messages and marks their conversation as active now."""
    session.add_all(rows)
    await session.flush()
    keys = {(m.conversation_id, m.workspace_id) for m in rows}
    await session.execute(
        update(Conversation)
        .where(tuple_(Conversation.id, Conversation.workspace_id).in_(keys))
        .values(updated_at=func.now())
    )


async def delete_conversation(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    conversation_id: uuid.UUID,
) -> bool:
    """Deletes the caller's conversation and its messages; False when not found."""
    stmt = (
        delete(Conversation)
        .where(Conversation.id == conversation_id, *_owned(workspace_id, user_id, api_key_id))
        .returning(Conversation.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None
