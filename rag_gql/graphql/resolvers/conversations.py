"""Conversations: list, read with messages, delete."""

from __future__ import annotations

from typing import Annotated

import strawberry

from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import DEFAULT_PAGE_SIZE, After, First, parse_id, selects

ConversationId = Annotated[strawberry.ID, strawberry.argument(description="The conversation's id.")]


@strawberry.type
class ConversationQuery:
    @strawberry.field(description="The caller's conversations in the workspace, most recent first.")
    async def conversations(
        self, info: Info, first: First = DEFAULT_PAGE_SIZE, after: After = None
    ) -> types.ConversationConnection:
        principal = await info.context.require_principal()
        page = await info.context.services.conversations.list_page(
            principal,
            first=DEFAULT_PAGE_SIZE if first is None else first,
            after=after,
            messages=selects(info.selected_fields, "edges", "node", "messages"),
        )
        edges = [
            types.ConversationEdge(node=types.conversation(c, page.messages[c.id]), cursor=cursor)
            for c, cursor in zip(page.items, page.cursors, strict=True)
        ]
        return types.ConversationConnection(
            edges=edges,
            page_info=types.PageInfo.of(
                page.cursors,
                has_next_page=page.has_next_page,
                has_previous_page=page.has_previous_page,
            ),
        )

    @strawberry.field(description="One of the caller's conversations, with its messages.")
    async def conversation(self, info: Info, id: ConversationId) -> types.Conversation:
        principal = await info.context.require_principal()
        found, messages = await info.context.services.conversations.get(
            principal, parse_id(id, "Conversation")
        )
        return types.conversation(found, messages)


@strawberry.type
class ConversationMutation:
    @strawberry.mutation(description="Deletes one of the caller's conversations.")
    async def delete_conversation(self, info: Info, id: ConversationId) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.conversations.delete(principal, parse_id(id, "Conversation"))
        return True
