"""The schema: the resolver modules' parts merged into Query, Mutation, Subscription.

`schema.graphql` at the project root is `print_schema(schema)`; a test keeps them equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import strawberry
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.tools import merge_types
from strawberry.types.execution import ExecutionContext

from rag_gql.graphql.extensions import DomainErrors, Observe
from rag_gql.graphql.inputs import RejectNulCharacters
from rag_gql.graphql.limits import CheckedDocuments, Limits, QueryLimits
from rag_gql.graphql.resolvers.answers import (
    AnswerStreamSubscription,
    AnswerSubscription,
    AskMutation,
)
from rag_gql.graphql.resolvers.api_keys import ApiKeyMutation, ApiKeyQuery
from rag_gql.graphql.resolvers.auth import AuthMutation, AuthQuery
from rag_gql.graphql.resolvers.collections import CollectionMutation, CollectionQuery
from rag_gql.graphql.resolvers.conversations import ConversationMutation, ConversationQuery
from rag_gql.graphql.resolvers.documents import (
    DocumentMutation,
    DocumentQuery,
    DocumentSubscription,
)
from rag_gql.graphql.resolvers.search import SearchQuery
from rag_gql.graphql.resolvers.workspaces import WorkspaceMutation, WorkspaceQuery


def _root(name: str, description: str, parts: tuple[type, ...]) -> type:
    """`merge_types` (which warns when two parts define one field), with the description it
    cannot take: a subclass of the merged type carries it."""
    merged = merge_types(name, parts)
    return strawberry.type(type(name, (merged,), {}), name=name, description=description)


Query = _root(
    "Query",
    "Reads: the caller, documents, search, workspaces and their members, collections, API "
    "keys and conversations.",
    (
        AuthQuery,
        DocumentQuery,
        SearchQuery,
        WorkspaceQuery,
        CollectionQuery,
        ApiKeyQuery,
        ConversationQuery,
    ),
)
Mutation = _root(
    "Mutation",
    "Changes: accounts and sessions, documents, workspaces and their members, collections, "
    "API keys, answers (`ask`) and conversations.",
    (
        AuthMutation,
        DocumentMutation,
        WorkspaceMutation,
        CollectionMutation,
        ApiKeyMutation,
        AskMutation,
        ConversationMutation,
    ),
)
Subscription = _root(
    "Subscription",
    "Live streams over WebSocket (`graphql-transport-ws`; authenticate in `connection_init`) "
    "or over HTTP (`Accept: multipart/mixed;subscriptionSpec=1.0`; the usual headers): "
    "answers as they are written (and resumed by id), and documents' ingestion progress.",
    (AnswerSubscription, AnswerStreamSubscription, DocumentSubscription),
)


class Schema(strawberry.Schema):
    """Strawberry's schema, without its own error logging: `DomainErrors` logs real bugs."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


def build_schema(
    limits: Limits | None = None,
    *,
    extensions: Sequence[Callable[[], SchemaExtension]] = (),
    **kwargs: Any,
) -> Schema:
    """Returns the schema with the error-mapping extension installed, and with `limits`
    enforced when given (the served app always gives them; see `rag_gql.graphql.limits`).

    `extensions` (classes or factories, one instance per operation) run inside `Observe`,
    which binds a WebSocket operation's request id, and outside everything else (the
    tracing of `rag_gql.observability.otel`).
    """
    installed: list[Any] = [Observe, *extensions, DomainErrors]
    if limits is not None:
        # A factory (one extension per operation) sharing one cache of checked documents.
        installed.append(partial(QueryLimits, limits, CheckedDocuments()))
    installed.append(RejectNulCharacters)  # after the limits: they validate first
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=installed,
        **kwargs,
    )


schema = build_schema()
"""The schema without limits: what `schema.graphql` prints, and for tools and tests."""
