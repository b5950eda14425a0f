"""GraphQL object types, and their conversion from service results."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry

from rag_gql.db import models
from rag_gql.services import auth, collections, generation, parsing, retrieval, workspaces
from rag_gql.services.document_events import DocumentState

strawberry.enum(models.DocumentStatus, description="Where a document is in ingestion.")
strawberry.enum(
    parsing.Unit,
    name="DocumentUnit",
    description="What a document's pages are: PAGE (PDF, EPUB, XPS...), SECTION (DOCX, HTML, "
    "Markdown, text: heading-delimited sections), ROWS (CSV: blocks of rows).",
)
strawberry.enum(
    models.Role,
    description="A role in a workspace: OWNER > ADMIN (members, API keys) > EDITOR (upload, "
    "delete) > VIEWER (search, answer).",
)


@strawberry.type(description="An account.")
class User:
    id: strawberry.ID
    email: str


@strawberry.type(description="A registration waiting for the emailed 6-digit code.")
class RegisterPayload:
    email: str
    code_expires_at: datetime


@strawberry.type(
    description="A session: a short-lived access token (JWT; send it as `Authorization: "
    "Bearer`) and a refresh token that renews it once with `refreshToken`."
)
class AuthPayload:
    access_token: str
    token_type: str
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    refresh_token: str = strawberry.field(
        description="Opaque; good for one `refreshToken` call, which returns the next one."
    )
    refresh_expires_in: int = strawberry.field(
        description="Seconds until the refresh token expires."
    )

    @classmethod
    def from_tokens(cls, tokens: auth.Tokens) -> AuthPayload:
        return cls(
            access_token=tokens.access.access_token,
            token_type=tokens.access.token_type,
            expires_in=tokens.access.expires_in,
            refresh_token=tokens.refresh_token,
            refresh_expires_in=tokens.refresh_expires_in,
        )


@strawberry.type(description="An uploaded document.")
class Document:
    id: strawberry.ID
    collection_id: strawberry.ID | None
    filename: str
    sha256: str = strawberry.field(description="SHA-256 of the file's bytes, hex.")
    media_type: str
    size_bytes: float = strawberry.field(description="Size of the file in bytes.")
    unit: parsing.Unit = strawberry.field(description="What `pageCount` and hits' `page` count.")
    page_count: int = strawberry.field(
        description="Pages (sections, row blocks) in the file; 0 until the worker has "
        "counted them (while QUEUED, and FAILED before counting)."
    )
    pages_done: int = strawberry.field(description="Pages parsed and embedded so far.")
    chunk_count: int = strawberry.field(description="Chunks searchable (0 until READY).")
    chunks_done: int = strawberry.field(description="Chunks embedded so far in this run.")
    status: models.DocumentStatus
    error: str | None = strawberry.field(
        description="Why ingestion FAILED (or, while QUEUED again, why it will retry)."
    )
    embed_model: str | None = strawberry.field(description="Model that embedded the chunks.")
    duplicate: bool = strawberry.field(
        description="True when this upload matched a document already in the workspace."
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, doc: models.Document, *, duplicate: bool = False) -> Document:
        return cls(
            id=strawberry.ID(str(doc.id)),
            collection_id=strawberry.ID(str(doc.collection_id)) if doc.collection_id else None,
            filename=doc.filename,
            sha256=doc.sha256,
            media_type=doc.media_type,
            size_bytes=doc.size_bytes,
            unit=parsing.Unit(doc.unit),
            page_count=doc.page_count,
            pages_done=doc.pages_done,
            chunk_count=doc.chunk_count,
            chunks_done=doc.chunks_done,
            status=models.DocumentStatus(doc.status),
            error=doc.error,
            embed_model=doc.embed_model,
            duplicate=duplicate,
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


@strawberry.type(description="A change of a document's status or ingestion progress.")
class DocumentEvent:
    document_id: strawberry.ID
    status: models.DocumentStatus
    pages_total: int = strawberry.field(description="Pages (sections, row blocks) in the file.")
    pages_done: int
    chunks_done: int
    chunk_count: int = strawberry.field(description="Chunks searchable (set when READY).")
    error: str | None
    deleted: bool = strawberry.field(
        default=False,
        description="The document was deleted: this is its last event (with its last "
        "status), and a subscription to this one document completes after it.",
    )

    @classmethod
    def from_state(cls, state: DocumentState) -> DocumentEvent:
        return cls(
            document_id=strawberry.ID(str(state.document_id)),
            status=models.DocumentStatus(state.status),
            pages_total=state.pages_total,
            pages_done=state.pages_done,
            chunks_done=state.chunks_done,
            chunk_count=state.chunk_count,
            error=state.error,
            deleted=state.deleted,
        )

    @classmethod
    def from_model(cls, doc: models.Document) -> DocumentEvent:
        return cls.from_state(
            DocumentState(
                document_id=doc.id,
                workspace_id=doc.workspace_id,
                status=doc.status,
                pages_total=doc.page_count,
                pages_done=doc.pages_done,
                chunks_done=doc.chunks_done,
                chunk_count=doc.chunk_count,
                error=doc.error,
            )
        )


@strawberry.type
class DocumentEdge:
    node: Document
    cursor: str


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(description="A page of documents, newest first (a Relay connection).")
class DocumentConnection:
    edges: list[DocumentEdge]
    page_info: PageInfo


strawberry.enum(
    retrieval.SearchMode,
    description="VECTOR: embeddings (HNSW, cosine). KEYWORD: full-text. HYBRID: both, fused "
    "by reciprocal rank fusion.",
)


@strawberry.input(description="Restricts a search; unset fields do not restrict.")
class SearchFilter:
    collection_ids: list[strawberry.ID] | None = None
    document_ids: list[strawberry.ID] | None = None
    filenames: list[str] | None = None
    page_from: int | None = strawberry.field(default=None, description="1-based, inclusive.")
    page_to: int | None = strawberry.field(default=None, description="1-based, inclusive.")
    created_after: datetime | None = None
    created_before: datetime | None = None


@strawberry.type(description="A passage that matches a query.")
class SearchHit:
    score: float = strawberry.field(
        description="VECTOR: cosine similarity; KEYWORD: ts_rank_cd; HYBRID: the fused score."
    )
    vector_rank: int | None = strawberry.field(
        description="1-based rank in the vector list, null when not in it."
    )
    keyword_rank: int | None = strawberry.field(
        description="1-based rank in the keyword list, null when not in it."
    )
    text: str
    snippet: str = strawberry.field(description="The text around the matches, marked **so**.")
    page: int = strawberry.field(description="1-based page number.")
    char_start: int = strawberry.field(description="Offset in the page's normalized text.")
    char_end: int
    document: Document

    @classmethod
    def from_hit(cls, hit: retrieval.SearchHit) -> SearchHit:
        return cls(
            score=hit.score,
            vector_rank=hit.vector_rank,
            keyword_rank=hit.keyword_rank,
            text=hit.text,
            snippet=hit.snippet,
            page=hit.page,
            char_start=hit.char_start,
            char_end=hit.char_end,
            document=Document.from_model(hit.document),
        )


@strawberry.type(description="A numbered source an answer cites, and where it is.")
class Citation:
    number: int = strawberry.field(description="The [n] marker in the answer.")
    document_id: strawberry.ID
    filename: str
    page: int = strawberry.field(description="1-based page number.")
    char_start: int = strawberry.field(description="Offset in the page's normalized text.")
    char_end: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Citation:
        return cls(
            number=int(data["number"]),
            document_id=strawberry.ID(str(data["documentId"])),
            filename=str(data["filename"]),
            page=int(data["page"]),
            char_start=int(data["charStart"]),
            char_end=int(data["charEnd"]),
        )


@strawberry.type(description="First event of an answer: the numbered sources, [1] first.")
class AnswerSources:
    sources: list[SearchHit]
    conversation_id: strawberry.ID = strawberry.field(
        description="Pass it back as `conversationId` to ask a follow-up."
    )
    standalone_question: str = strawberry.field(
        description="The question retrieval used: a follow-up rewritten to stand alone."
    )


@strawberry.type(description="A piece of the answer, as the model streamed it.")
class AnswerToken:
    text: str


@strawberry.type(description="Last event of a complete answer.")
class AnswerDone:
    message_id: strawberry.ID
    citations: list[Citation] = strawberry.field(
        description="The sources the answer cites ([n] markers), in order of first citation."
    )
    grounded: bool = strawberry.field(
        description="False when sources were given and the answer cites none of them."
    )
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_ms: float


@strawberry.type(description="The answer stopped; `code` is an error code like UPSTREAM_ERROR.")
class AnswerError:
    code: str
    message: str


AnswerEvent = Annotated[
    AnswerSources | AnswerToken | AnswerDone | AnswerError,
    strawberry.union("AnswerEvent", description="An event of a streamed answer."),
]


@strawberry.type(description="Token counts and times of an answer.")
class Usage:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_ms: float


@strawberry.type(description="A whole answer at once (`ask`), for clients that don't stream.")
class AskResult:
    text: str
    conversation_id: strawberry.ID
    message_id: strawberry.ID | None
    standalone_question: str
    sources: list[SearchHit]
    citations: list[Citation]
    grounded: bool
    usage: Usage | None
    error: AnswerError | None = strawberry.field(
        description="Set when the answer stopped after its sources (the text is partial)."
    )


@strawberry.type(description="One turn of a conversation.")
class ConversationMessage:
    id: strawberry.ID
    role: str = strawberry.field(description="`user` or `assistant`.")
    content: str
    status: str = strawberry.field(description="`complete`, `interrupted` or `failed`.")
    standalone_question: str | None
    citations: list[Citation]
    sources: list[Citation] = strawberry.field(description="The numbered sources given.")
    prompt_tokens: int | None
    completion_tokens: int | None
    time_to_first_token_ms: float | None
    total_ms: float | None
    created_at: datetime

    @classmethod
    def from_model(cls, m: models.Message) -> ConversationMessage:
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
    id: strawberry.ID
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[ConversationMessage]


@strawberry.type
class ConversationEdge:
    node: Conversation
    cursor: str


@strawberry.type(description="The caller's conversations, most recent first.")
class ConversationConnection:
    edges: list[ConversationEdge]
    page_info: PageInfo


def conversation(c: models.Conversation, messages: list[models.Message]) -> Conversation:
    """Converts a conversation and its messages."""
    return Conversation(
        id=strawberry.ID(str(c.id)),
        title=c.title,
        created_at=c.created_at,
        updated_at=c.updated_at,
        messages=[ConversationMessage.from_model(m) for m in messages],
    )


def _citation(c: generation.Citation) -> Citation:
    return Citation.from_json(c.as_json())


def ask_result(result: generation.AskResult) -> AskResult:
    """Converts a collected answer."""
    assert result.sources is not None  # `ask` raises before the sources otherwise
    done, failed = result.done, result.failed
    return AskResult(
        text=result.text,
        conversation_id=strawberry.ID(str(result.sources.conversation_id)),
        message_id=strawberry.ID(str(done.message_id)) if done else None,
        standalone_question=result.sources.standalone_question,
        sources=[SearchHit.from_hit(h) for h in result.sources.hits],
        citations=[_citation(c) for c in done.citations] if done else [],
        grounded=done.grounded if done else False,
        usage=Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            time_to_first_token_ms=done.time_to_first_token_ms,
            total_ms=done.total_ms,
        )
        if done
        else None,
        error=AnswerError(code=failed.code, message=failed.message) if failed else None,
    )


def answer_event(event: generation.AnswerEvent) -> AnswerEvent:
    """Converts a service event to its GraphQL type."""
    match event:
        case generation.Sources(hits=hits):
            return AnswerSources(
                sources=[SearchHit.from_hit(h) for h in hits],
                conversation_id=strawberry.ID(str(event.conversation_id)),
                standalone_question=event.standalone_question,
            )
        case generation.Token(text=text):
            return AnswerToken(text=text)
        case generation.Done():
            return AnswerDone(
                message_id=strawberry.ID(str(event.message_id)),
                citations=[_citation(c) for c in event.citations],
                grounded=event.grounded,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                time_to_first_token_ms=event.time_to_first_token_ms,
                total_ms=event.total_ms,
            )
        case generation.Failed(code=code, message=message):
            return AnswerError(code=code, message=message)


@strawberry.type(description="A workspace (the tenant) and the caller's role in it.")
class Workspace:
    id: strawberry.ID
    name: str
    personal: bool
    role: models.Role
    created_at: datetime

    @classmethod
    def from_view(cls, view: workspaces.WorkspaceView) -> Workspace:
        ws = view.workspace
        return cls(
            id=strawberry.ID(str(ws.id)),
            name=ws.name,
            personal=ws.personal,
            role=view.role,
            created_at=ws.created_at,
        )


@strawberry.type(description="A member of a workspace.")
class Member:
    user: User
    role: models.Role
    joined_at: datetime

    @classmethod
    def from_view(cls, view: workspaces.MemberView) -> Member:
        return cls(
            user=User(id=strawberry.ID(str(view.user.id)), email=view.user.email),
            role=models.Role(view.membership.role),
            joined_at=view.membership.created_at,
        )


@strawberry.type(description="An invitation sent by email; its token is only in the email.")
class Invitation:
    id: strawberry.ID
    email: str
    role: models.Role
    expires_at: datetime

    @classmethod
    def from_view(cls, view: workspaces.InvitationView) -> Invitation:
        inv = view.invitation
        return cls(
            id=strawberry.ID(str(inv.id)),
            email=inv.email,
            role=models.Role(inv.role),
            expires_at=inv.expires_at,
        )


@strawberry.type(description="A named group of documents in a workspace.")
class Collection:
    id: strawberry.ID
    name: str
    document_count: int
    created_at: datetime

    @classmethod
    def from_view(cls, view: collections.CollectionView) -> Collection:
        c = view.collection
        return cls(
            id=strawberry.ID(str(c.id)),
            name=c.name,
            document_count=view.document_count,
            created_at=c.created_at,
        )


@strawberry.type(description="A workspace's key for services; its secret was shown only once.")
class ApiKey:
    id: strawberry.ID
    name: str
    role: models.Role
    prefix: str = strawberry.field(description="The secret's start (`rgk_` + 8 characters).")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = strawberry.field(description="Updated at most once a minute.")
    revoked_at: datetime | None

    @classmethod
    def from_model(cls, key: models.ApiKey) -> ApiKey:
        return cls(
            id=strawberry.ID(str(key.id)),
            name=key.name,
            role=models.Role(key.role),
            prefix=key.prefix,
            created_at=key.created_at,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


@strawberry.type(description="A new API key and its secret, shown this once and never again.")
class CreateApiKeyPayload:
    api_key: ApiKey
    secret: str = strawberry.field(
        description="Send as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`."
    )
