"""Reading and deleting the caller's conversations (the generation service writes them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.db import Database
from rag_gql.db.models import Conversation, Message
from rag_gql.errors import InvalidInput, NotFound
from rag_gql.repositories import conversations
from rag_gql.services.access import Action, Principal
from rag_gql.services.documents import MAX_PAGE_SIZE, decode_cursor, encode_cursor


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """Conversations, most recently active first, with their opaque cursors."""

    items: list[Conversation]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool
    """Conversations are more recently active than the `after` cursor (False without one)."""
    messages: dict[uuid.UUID, list[Message]]
    """Each conversation's messages, oldest first, when asked for (else empty)."""


class ConversationService:
    """The caller's own conversations in the request's workspace."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def list_page(
        self, principal: Principal, *, first: int, after: str | None, messages: bool = False
    ) -> ConversationPage:
        """Up to `first` (1..100) conversations after `after`, with their messages when
        `messages` (one more query for the whole page). Raises `InvalidInput`."""
        principal.require(Action.READ)
        if not 1 <= first <= MAX_PAGE_SIZE:
            raise InvalidInput(f"first must be between 1 and {MAX_PAGE_SIZE}")
        before = decode_cursor(after) if after else None
        async with self._db.transaction(principal.workspace_id) as session:
            rows = await conversations.list_page(
                session,
                workspace_id=principal.workspace_id,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                limit=first + 1,
                before=before,
            )
            newer = before is not None and await conversations.any_newer(
                session,
                workspace_id=principal.workspace_id,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                than=before,
            )
            items = rows[:first]
            by_conversation: dict[uuid.UUID, list[Message]] = {c.id: [] for c in items}
            if messages and items:
                for message in await conversations.messages_of(
                    session,
                    workspace_id=principal.workspace_id,
                    conversation_ids=list(by_conversation),
                ):
                    by_conversation[message.conversation_id].append(message)
        return ConversationPage(
            items=items,
            cursors=[encode_cursor(c.updated_at, c.id) for c in items],
            has_next_page=len(rows) > first,
            has_previous_page=newer,
            messages=by_conversation,
        )

    async def get(
        self, principal: Principal, conversation_id: uuid.UUID
    ) -> tuple[Conversation, list[Message]]:
        """The conversation with its messages, oldest first. Raises `NotFound`."""
        principal.require(Action.READ)
        async with self._db.transaction(principal.workspace_id) as session:
            return await find_thread(session, principal, conversation_id)

    async def delete(self, principal: Principal, conversation_id: uuid.UUID) -> None:
        """Deletes the conversation and its messages. Raises `NotFound`."""
        principal.require(Action.READ)
        async with self._db.transaction(principal.workspace_id) as session:
            deleted = await conversations.delete_conversation(
                session,
                workspace_id=principal.workspace_id,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                conversation_id=conversation_id,
            )
        if not deleted:
            raise NotFound("Conversation not found")


async def find_thread(
    session: AsyncSession, principal: Principal, conversation_id: uuid.UUID
) -> tuple[Conversation, list[Message]]:
    """The caller's conversation `conversation_id` in the principal's workspace (one of its
    user's, or its API key's) with its messages, oldest first, read in `session`.

    Raises:
        NotFound: no such conversation of the caller's.
    """
    found = await conversations.get(
        session,
        workspace_id=principal.workspace_id,
        user_id=principal.user_id,
        api_key_id=principal.api_key_id,
        conversation_id=conversation_id,
    )
    if found is None:
        raise NotFound("Conversation not found")
    messages = await conversations.messages(
        session, workspace_id=principal.workspace_id, conversation_id=found.id
    )
    return found, messages
