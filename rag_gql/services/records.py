"""The stored records and enums the services hand to the GraphQL layer, so that it needs no
import of `rag_gql.db` (resolvers talk to services only; `tests/test_layers.py`)."""

from rag_gql.db.models import (
    ApiKey,
    Collection,
    Conversation,
    Document,
    DocumentStatus,
    Message,
    Role,
)

__all__ = [
    "ApiKey",
    "Collection",
    "Conversation",
    "Document",
    "DocumentStatus",
    "Message",
    "Role",
]
