"""Documents: upload, list, read, delete, reindex, and live ingestion events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON

from rag_gql.errors import InvalidInput
from rag_gql.graphql import types
from rag_gql.graphql.context import Info
from rag_gql.graphql.resolvers.common import DEFAULT_PAGE_SIZE, After, First, parse_id
from rag_gql.ingestion.submit import receive
from rag_gql.services.document_events import DocumentState
from rag_gql.services.rate_limits import Operation

DocumentId = Annotated[strawberry.ID, strawberry.argument(description="The document's id.")]
METADATA_SHAPE = (
    "a flat JSON object of strings, numbers, booleans or lists of them, at most "
    "MAX_METADATA_BYTES (16 KiB by default) as JSON; nesting, null and NUL are refused "
    "(BAD_USER_INPUT)"
)


@strawberry.type
class DocumentQuery:
    @strawberry.field(description="One of the workspace's documents.")
    async def document(self, info: Info, id: DocumentId) -> types.Document:
        principal = await info.context.require_principal()
        doc = await info.context.services.documents.get(principal, parse_id(id, "Document"))
        return types.Document.from_model(doc)

    @strawberry.field(description="The workspace's documents, newest first.")
    async def documents(
        self,
        info: Info,
        first: First = DEFAULT_PAGE_SIZE,
        after: After = None,
        metadata: Annotated[
            list[types.MetadataCondition] | None,
            strawberry.argument(
                description="Only documents whose user metadata meets every one of these "
                "conditions (at most 20), as `SearchFilter.metadata`; null: all."
            ),
        ] = None,
    ) -> types.DocumentConnection:
        principal = await info.context.require_principal()
        page = await info.context.services.documents.list_page(
            principal,
            first=DEFAULT_PAGE_SIZE if first is None else first,
            after=after,
            metadata=types.conditions(metadata),
        )
        edges = [
            types.DocumentEdge(node=types.Document.from_model(doc), cursor=cursor)
            for doc, cursor in zip(page.items, page.cursors, strict=True)
        ]
        return types.DocumentConnection(
            edges=edges,
            page_info=types.PageInfo.of(
                page.cursors,
                has_next_page=page.has_next_page,
                has_previous_page=page.has_previous_page,
            ),
        )


@strawberry.type
class DocumentMutation:
    @strawberry.mutation(
        description="Uploads a document (PDF, EPUB, XPS, MOBI, FB2, CBZ, DOCX, HTML, Markdown, "
        "text, CSV) as a GraphQL multipart request (send `Apollo-Require-Preflight`). Returns at "
        "once with status QUEUED; follow it with `documentEvents` or `document`."
    )
    async def upload_document(
        self,
        info: Info,
        file: Annotated[
            Upload,
            strawberry.argument(
                description="The file: a part of the multipart request, at most "
                "MAX_UPLOAD_BYTES (100 MiB by default) with at most MAX_PAGES pages (5000)."
            ),
        ],
        collection_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Put it in this collection; null: in none."),
        ] = None,
        metadata: Annotated[
            JSON | None,
            strawberry.argument(
                description=f"The user's metadata of the document: {METADATA_SHAPE}; null: "
                "none. A duplicate upload keeps the existing document's."
            ),
        ] = None,
    ) -> types.Document:
        principal = await info.context.require_principal()
        services = info.context.services
        await services.quotas.hit(Operation.UPLOAD, principal)
        collection = parse_id(collection_id, "Collection") if collection_id else None
        if not isinstance(file, UploadFile):
            # A literal or a JSON variable, not a multipart part: Strawberry passes it as is.
            raise InvalidInput(
                "file must be a file part of a multipart request "
                "(the GraphQL multipart request spec), not a value in the query"
            )
        upload = file
        filename = upload.filename or "upload"
        async with receive(
            upload.read, filename=filename, max_bytes=services.settings.max_upload_bytes
        ) as received:
            result = await services.ingestion.submit(
                principal,
                filename=filename,
                upload=received,
                collection_id=collection,
                metadata=metadata,
            )
        return types.Document.from_model(result.document, duplicate=result.duplicate)

    @strawberry.mutation(
        description="Replaces a document's user metadata (EDITOR or ADMIN); its search "
        "filters apply at once, without reindexing."
    )
    async def update_document_metadata(
        self,
        info: Info,
        id: DocumentId,
        metadata: Annotated[
            JSON, strawberry.argument(description=f"The new metadata: {METADATA_SHAPE}.")
        ],
    ) -> types.Document:
        principal = await info.context.require_principal()
        doc = await info.context.services.documents.update_metadata(
            principal, parse_id(id, "Document"), metadata
        )
        return types.Document.from_model(doc)

    @strawberry.mutation(
        description="Parses and embeds a document again with the current model; its current "
        "chunks stay searchable until the new ones replace them all at once."
    )
    async def reindex_document(self, info: Info, id: DocumentId) -> types.Document:
        principal = await info.context.require_principal()
        await info.context.services.quotas.hit(Operation.REINDEX, principal)
        doc = await info.context.services.ingestion.reindex(principal, parse_id(id, "Document"))
        return types.Document.from_model(doc)

    @strawberry.mutation(description="Deletes one of the workspace's documents and its chunks.")
    async def delete_document(self, info: Info, id: DocumentId) -> bool:
        principal = await info.context.require_principal()
        await info.context.services.documents.delete(principal, parse_id(id, "Document"))
        return True


@strawberry.type
class DocumentSubscription:
    @strawberry.subscription(
        description="Status and progress of one document (ends when it is READY or FAILED), "
        "or of all the workspace's documents when no id is given. Starts with the document's "
        "current state when an id is given. The credential is checked again every "
        "SUBSCRIPTION_REAUTH_SECONDS (60): once it has expired or been revoked, or the caller "
        "has left the workspace, the stream ends with an UNAUTHENTICATED or FORBIDDEN error."
    )
    async def document_events(
        self,
        info: Info,
        document_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Follow this document; null: all of them."),
        ] = None,
    ) -> AsyncGenerator[types.DocumentEvent, None]:
        principal = await info.context.require_principal()
        services = info.context.services
        wanted = parse_id(document_id, "Document") if document_id else None
        every = services.settings.subscription_reauth_seconds
        loop = asyncio.get_running_loop()
        async with services.document_events.subscribe(principal, wanted) as events:
            if wanted is not None:
                current = DocumentState.of(await services.documents.get(principal, wanted))
                events.seen(current)
                yield types.DocumentEvent.from_state(current)
                if current.terminal:
                    return
            recheck_at = loop.time() + every
            while True:
                if loop.time() >= recheck_at:  # raises once the caller has lost access
                    await info.context.reauthorize(principal)
                    recheck_at = loop.time() + every
                try:
                    async with asyncio.timeout_at(recheck_at):
                        state = await events.get()
                except TimeoutError:
                    continue
                yield types.DocumentEvent.from_state(state)
                if wanted is not None and state.terminal:
                    return
