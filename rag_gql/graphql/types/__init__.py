"""The GraphQL object types by area, and their conversion from service results; every name
is re-exported here (`types.Document`), each defined in its area's module."""

from rag_gql.graphql.types.answers import (
    COMPLETION_TOKENS,
    DURATION_MS,
    LATENCY_MS,
    PROMPT_TOKENS,
    AnswerDone,
    AnswerError,
    AnswerEvent,
    AnswerSources,
    AnswerToken,
    AskResult,
    Citation,
    Usage,
    answer_event,
    ask_result,
)
from rag_gql.graphql.types.api_keys import ApiKey, CreateApiKeyPayload
from rag_gql.graphql.types.auth import AuthPayload, RegisterPayload, User
from rag_gql.graphql.types.collections import Collection
from rag_gql.graphql.types.common import CURSOR, PageInfo
from rag_gql.graphql.types.conversations import (
    Conversation,
    ConversationConnection,
    ConversationEdge,
    ConversationMessage,
    conversation,
)
from rag_gql.graphql.types.documents import (
    Document,
    DocumentConnection,
    DocumentEdge,
    DocumentEvent,
)
from rag_gql.graphql.types.enums import DocumentStatus, Role, SearchMode, Unit
from rag_gql.graphql.types.search import MetadataCondition, SearchFilter, SearchHit, conditions
from rag_gql.graphql.types.workspaces import Invitation, Member, Workspace

__all__ = [
    "COMPLETION_TOKENS",
    "CURSOR",
    "DURATION_MS",
    "LATENCY_MS",
    "PROMPT_TOKENS",
    "AnswerDone",
    "AnswerError",
    "AnswerEvent",
    "AnswerSources",
    "AnswerToken",
    "ApiKey",
    "AskResult",
    "AuthPayload",
    "Citation",
    "Collection",
    "Conversation",
    "ConversationConnection",
    "ConversationEdge",
    "ConversationMessage",
    "CreateApiKeyPayload",
    "Document",
    "DocumentConnection",
    "DocumentEdge",
    "DocumentEvent",
    "DocumentStatus",
    "Invitation",
    "Member",
    "MetadataCondition",
    "PageInfo",
    "RegisterPayload",
    "Role",
    "SearchFilter",
    "SearchHit",
    "SearchMode",
    "Unit",
    "Usage",
    "User",
    "Workspace",
    "answer_event",
    "ask_result",
    "conditions",
    "conversation",
]
