"""The schema: Query, Mutation, Subscription. Resolvers unpack, call one service, convert.

`schema.graphql` at the project root is `print_schema(schema)`; a test keeps them equal.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Any, cast

import strawberry
from graphql.error import GraphQLError
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload
from strawberry.types.execution import ExecutionContext

from rag_gql.errors import NotFound
from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.extensions import DomainErrors

DEFAULT_K = 5
DEFAULT_PAGE_SIZE = 20


def _uuid(value: strawberry.ID) -> uuid.UUID:
    """Parses an id; a malformed one is simply not found (ids are opaque to clients)."""
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise NotFound("Document not found") from exc


@strawberry.type
class Query:
    @strawberry.field(description="The caller.")
    async def me(self, info: Info) -> types.User:
        principal = await info.context.require_principal()
        return types.User(id=strawberry.ID(str(principal.user_id)), email=principal.email)

    @strawberry.field(description="One of the caller's documents.")
    async def document(self, info: Info, id: strawberry.ID) -> types.Document:
        principal = await info.context.require_principal()
        doc = await info.context.services.documents.get(principal, _uuid(id))
        return types.Document.from_model(doc)

    @strawberry.field(description="The caller's documents, newest first.")
    async def documents(
        self, info: Info, first: int | None = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> types.DocumentConnection:
        principal = await info.context.require_principal()
        page = await info.context.services.documents.list_page(
            principal, first=DEFAULT_PAGE_SIZE if first is None else first, after=after
        )
        edges = [
            types.DocumentEdge(node=types.Document.from_model(doc), cursor=cursor)
            for doc, cursor in zip(page.items, page.cursors, strict=True)
        ]
        return types.DocumentConnection(
            edges=edges,
            page_info=types.PageInfo(
                has_next_page=page.has_next_page,
                end_cursor=page.cursors[-1] if page.cursors else None,
            ),
        )

    @strawberry.field(description="The caller's passages most similar to `query`, best first.")
    async def search(
        self, info: Info, query: str, k: int | None = DEFAULT_K
    ) -> list[types.SearchHit]:
        principal = await info.context.require_principal()
        hits = await info.context.services.retrieval.search(
            principal, query, DEFAULT_K if k is None else k
        )
        return [types.SearchHit.from_hit(hit) for hit in hits]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Creates an account and emails it a 6-digit code.")
    async def register(self, info: Info, email: str, password: str) -> types.RegisterPayload:
        result = await info.context.services.auth.register(email, password)
        return types.RegisterPayload(email=result.email, code_expires_at=result.code_expires_at)

    @strawberry.mutation(description="Activates an account with the emailed code.")
    async def verify_email(self, info: Info, email: str, code: str) -> types.User:
        user = await info.context.services.auth.verify_email(email, code)
        return types.User(id=strawberry.ID(str(user.id)), email=user.email)

    @strawberry.mutation(description="Exchanges email and password for an access token.")
    async def login(self, info: Info, email: str, password: str) -> types.AuthPayload:
        token = await info.context.services.auth.login(email, password)
        return types.AuthPayload.from_token(token)

    @strawberry.mutation(
        description="Uploads a PDF (GraphQL multipart request; send `Apollo-Require-Preflight`)."
    )
    async def upload_document(self, info: Info, file: Upload) -> types.Document:
        principal = await info.context.require_principal()
        upload = cast(UploadFile, file)  # Strawberry hands Starlette's UploadFile over
        data = await upload.read()
        result = await info.context.services.ingestion.ingest(
            principal, filename=upload.filename or "upload", data=data
        )
        return types.Document.from_model(result.document, duplicate=result.duplicate)

    @strawberry.mutation(description="Deletes one of the caller's documents and its chunks.")
    async def delete_document(self, info: Info, id: strawberry.ID) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.documents.delete(principal, _uuid(id))
        return True


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Answers from the caller's documents: sources, tokens as they stream, done."
    )
    async def answer(
        self, info: Info, question: str, k: int | None = DEFAULT_K
    ) -> AsyncGenerator[types.AnswerEvent, None]:
        principal = await info.context.require_principal()
        events = info.context.services.generation.answer(
            principal, question, DEFAULT_K if k is None else k
        )
        async for event in events:
            yield types.answer_event(event)


class Schema(strawberry.Schema):
    """Strawberry's schema, without its own error logging: `DomainErrors` logs real bugs."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


def build_schema(**kwargs: Any) -> Schema:
    """Returns the schema with the error-mapping extension installed."""
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[DomainErrors],
        **kwargs,
    )


schema = build_schema()
