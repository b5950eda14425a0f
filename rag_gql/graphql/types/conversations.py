"""Conversations: a thread and its messages, and their connection."""

from __future__ import annotations

from datetime import datetime

import strawberry

from rag_gql.graphql.types.answers import (
    COMPLETION_TOKENS,
    DURATION_MS,
    LATENCY_MS,
    PROMPT_TOKENS,
    Citation,
)
from rag_gql.graphql.types.common import CURSOR, PageInfo
from rag_gql.services import records


@strawberry.type(description="One turn of a conversation.")
class ConversationMessage:
    id: strawberry.ID = strawberry.field(description="The message's id.")
    role: str = strawberry.field(description="`user` or `assistant`.")
    content: str = strawberry.field(
        description="The question, or the answer's text with its [n] markers (partial when "
        "not `complete`)."
    )
    status: str = strawberry.field(
        description="`streaming` (being written now: follow it with `answerStream`), "
        "`complete`, `interrupted` (stopped before its end) or `failed`."
    )
    standalone_question: str | None = strawberry.field(
        description="An answer's question as retrieval used it; null for a question."
    )
    citations: list[Citation] = strawberry.field(
        description="The sources the answer cites ([n] markers), in order of first citation."
    )
    sources: list[Citation] = strawberry.field(description="The numbered sources given.")
    prompt_tokens: int | None = strawberry.field(
        description=PROMPT_TOKENS + " Null for a question or an answer that did not complete."
    )
    completion_tokens: int | None = strawberry.field(
        description=COMPLETION_TOKENS + " Null for a question or an answer that did not complete."
    )
    time_to_first_token_ms: float | None = strawberry.field(
        description=LATENCY_MS + " Null for a question or an answer that did not complete."
    )
    total_ms: float | None = strawberry.field(
        description=DURATION_MS + " Null for a question or an answer that did not complete."
    )
    created_at: datetime = strawberry.field(description="When it was stored.")

    @classmethod
    def from_model(cls, m: records.Message) -> ConversationMessage:
        return cls(
            id=strawberry.ID(str(m.id)),
            role=m.role,
            content=m.content,
            status=m.status,
            standalone_question=m.standalone_question,
            citations=[Citation.from_json(c) for c in m.citations],
            sources=[Citation.from_json(c) for c in m.sources],
            prompt_tokens=m.prompt_tokens,
            completion_tokens=m.completion_tokens,
            time_to_first_token_ms=m.time_to_first_token_ms,
            total_ms=m.total_ms,
            created_at=m.created_at,
        )


@strawberry.type(description="A thread of questions and answers.")
class Conversation:
    id: strawberry.ID = strawberry.field(
        description="Pass it as `conversationId` to ask a follow-up."
    )
    title: str = strawberry.field(description="The first question's first 80 characters.")
    created_at: datetime = strawberry.field(description="When the first question was asked.")
    updated_at: datetime = strawberry.field(description="When its last message was stored.")
    messages: list[ConversationMessage] = strawberry.field(
        description="Its questions and answers, oldest first."
    )


@strawberry.type(description="A conversation and its cursor.")
class ConversationEdge:
    node: Conversation = strawberry.field(description="The conversation.")
    cursor: str = strawberry.field(description=CURSOR)


@strawberry.type(description="The caller's conversations, most recent first.")
class ConversationConnection:
    edges: list[ConversationEdge] = strawberry.field(
        description="The page's conversations, in order."
    )
    page_info: PageInfo = strawberry.field(description="Where the page is in the whole list.")


def conversation(c: records.Conversation, messages: list[records.Message]) -> Conversation:
    """Converts a conversation and its messages."""
    return Conversation(
        id=strawberry.ID(str(c.id)),
        title=c.title,
        created_at=c.created_at,
        updated_at=c.updated_at,
        messages=[ConversationMessage.from_model(m) for m in messages],
    )
