"""Documents: upload, list, read, delete."""

from __future__ import annotations

from typing import cast

import strawberry
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload

from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import parse_id

DEFAULT_PAGE_SIZE = 20


@strawberry.type
class DocumentQuery:
    @strawberry.field(description="One of the workspace's documents.")
    async def document(self, info: Info, id: strawberry.ID) -> types.Document:
        principal = await info.context.require_principal()
        doc = await info.context.services.documents.get(principal, parse_id(id, "Document"))
        return types.Document.from_model(doc)

    @strawberry.field(description="The workspace's documents, newest first.")
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


@strawberry.type
class DocumentMutation:
    @strawberry.mutation(
        description="Uploads a PDF (GraphQL multipart request; send `Apollo-Require-Preflight`)."
    )
    async def upload_document(
        self, info: Info, file: Upload, collection_id: strawberry.ID | None = None
    ) -> types.Document:
        principal = await info.context.require_principal()
        collection = parse_id(collection_id, "Collection") if collection_id else None
        upload = cast(UploadFile, file)  # Strawberry hands Starlette's UploadFile over
        data = await upload.read()
        result = await info.context.services.ingestion.ingest(
            principal, filename=upload.filename or "upload", data=data, collection_id=collection
        )
        return types.Document.from_model(result.document, duplicate=result.duplicate)

    @strawberry.mutation(description="Deletes one of the workspace's documents and its chunks.")
    async def delete_document(self, info: Info, id: strawberry.ID) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.documents.delete(principal, parse_id(id, "Document"))
        return True
