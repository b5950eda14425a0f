"""GraphQL object types, and their conversion from service results."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.types.enum import has_enum_definition

from rag_gql.db import models
from rag_gql.graphql.context import Info
from rag_gql.services import auth, collections, generation, parsing, retrieval, workspaces
from rag_gql.services.answers import Sequenced
from rag_gql.services.document_events import DocumentState


def _enum(
    cls: type[enum.Enum], *, description: str, values: dict[str, str], name: str | None = None
) -> None:
    """Registers a service's enum (services never import strawberry) as a GraphQL enum, with
    a description for each value (`strawberry.enum_value` would have to be in the enum)."""
    strawberry.enum(cls, name=name, description=description)
    assert has_enum_definition(cls)
    for value in cls.__strawberry_definition__.values:
        value.description = values[value.name]


_enum(
    models.DocumentStatus,
    description="Where a document is in ingestion: QUEUED, PARSING, EMBEDDING, then READY or "
    "FAILED.",
    values={
        "QUEUED": "Stored and waiting for an ingestion worker (again, while a failed attempt "
        "waits to be retried; `error` says why).",
        "PARSING": "Its text is being extracted, page by page.",
        "EMBEDDING": "Its chunks are being embedded.",
        "READY": "Searchable: every chunk is embedded.",
        "FAILED": "Ingestion stopped for good; `error` says why.",
    },
)
_enum(
    parsing.Unit,
    name="DocumentUnit",
    description="What a document's pages are: PAGE (PDF, EPUB, XPS...), SECTION (DOCX, HTML, "
    "Markdown, text: heading-delimited sections), ROWS (CSV: blocks of rows).",
    values={
        "PAGE": "PDF, XPS and CBZ pages; EPUB, MOBI and FB2 pages as they are laid out.",
        "SECTION": "DOCX, HTML, Markdown: heading-delimited sections; plain text: paragraphs "
        "up to about 4 KB.",
        "ROWS": "CSV: blocks of 50 rows.",
    },
)
_enum(
    models.Role,
    description="A role in a workspace: OWNER > ADMIN (members, API keys) > EDITOR (upload, "
    "delete) > VIEWER (search, answer).",
    values={
        "OWNER": "Everything an ADMIN may do, and grant OWNER; a workspace keeps at least one.",
        "ADMIN": "Manages members, invitations and API keys, besides what an EDITOR may do.",
        "EDITOR": "Uploads, reindexes and deletes documents and collections, besides what a "
        "VIEWER may do.",
        "VIEWER": "Reads documents, searches and asks questions.",
    },
)


@strawberry.type(description="An account.")
class User:
    id: strawberry.ID = strawberry.field(description="The user's id.")
    email: str = strawberry.field(description="The account's email address, lower-cased.")


@strawberry.type(description="A registration waiting for the emailed 6-digit code.")
class RegisterPayload:
    email: str = strawberry.field(
        description="Where the code (or, for an existing account, a notice) was sent, as "
        "stored (lower-cased)."
    )
    code_expires_at: datetime = strawberry.field(
        description="When the code stops working; `register` again for a new one."
    )


@strawberry.type(
    description="A session: a short-lived access token (JWT; send it as `Authorization: "
    "Bearer`) and a refresh token that renews it once with `refreshToken`."
)
class AuthPayload:
    access_token: str = strawberry.field(
        description="A signed JWT; send it as `Authorization: Bearer <accessToken>`."
    )
    token_type: str = strawberry.field(description="Always `Bearer` (RFC 6750).")
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
    id: strawberry.ID = strawberry.field(description="The document's id.")
    collection_id: strawberry.ID | None = strawberry.field(
        description="The collection it belongs to; null when none."
    )
    filename: str = strawberry.field(
        description="The uploaded file's name, without control characters, at most 255 characters."
    )
    sha256: str = strawberry.field(description="SHA-256 of the file's bytes, hex.")
    media_type: str = strawberry.field(
        description="The file's media type as detected from its bytes and name, like "
        "`application/pdf`."
    )
    size_bytes: float = strawberry.field(description="Size of the file in bytes.")
    unit: parsing.Unit = strawberry.field(description="What `pageCount` and hits' `page` count.")
    page_count: int = strawberry.field(
        description="Pages (sections, row blocks) in the file; 0 until the worker has "
        "counted them (while QUEUED, and FAILED before counting)."
    )
    pages_done: int = strawberry.field(description="Pages parsed and embedded so far.")
    chunk_count: int = strawberry.field(description="Chunks searchable (0 until READY).")
    chunks_done: int = strawberry.field(description="Chunks embedded so far in this run.")
    status: models.DocumentStatus = strawberry.field(description="Where it is in ingestion.")
    error: str | None = strawberry.field(
        description="Why ingestion FAILED (or, while QUEUED again, why it will retry)."
    )
    embed_model: str | None = strawberry.field(description="Model that embedded the chunks.")
    duplicate: bool = strawberry.field(
        description="True when this upload matched a document already in the workspace."
    )
    created_at: datetime = strawberry.field(description="When it was uploaded.")
    updated_at: datetime = strawberry.field(description="When its status or progress last changed.")

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
    document_id: strawberry.ID = strawberry.field(description="The document that changed.")
    status: models.DocumentStatus = strawberry.field(description="Where it is in ingestion.")
    pages_total: int = strawberry.field(description="Pages (sections, row blocks) in the file.")
    pages_done: int = strawberry.field(description="Pages parsed and embedded so far.")
    chunks_done: int = strawberry.field(description="Chunks embedded so far in this run.")
    chunk_count: int = strawberry.field(description="Chunks searchable (set when READY).")
    error: str | None = strawberry.field(
        description="Why ingestion FAILED (or, while QUEUED again, why it will retry)."
    )
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


CURSOR = "Opaque; pass it as `after` for the items that follow this one."


@strawberry.type(description="A document and its cursor.")
class DocumentEdge:
    node: Document = strawberry.field(description="The document.")
    cursor: str = strawberry.field(description=CURSOR)


@strawberry.type(
    description="Where a page of a connection is in the whole list (Relay Cursor Connections)."
)
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="True when items follow this page; fetch them with `after: endCursor`."
    )
    has_previous_page: bool = strawberry.field(
        description="True when `after` was given and items come before the cursor's own item "
        "in the list's order now (the Relay spec's elements prior to `after`); always false "
        "without `after`."
    )
    start_cursor: str | None = strawberry.field(
        description="The cursor of the page's first edge; null when the page is empty."
    )
    end_cursor: str | None = strawberry.field(
        description="The cursor of the page's last edge; null when the page is empty."
    )

    @classmethod
    def of(cls, cursors: list[str], *, has_next_page: bool, has_previous_page: bool) -> PageInfo:
        """The page info of a page whose edges have `cursors`, in order."""
        return cls(
            has_next_page=has_next_page,
            has_previous_page=has_previous_page,
            start_cursor=cursors[0] if cursors else None,
            end_cursor=cursors[-1] if cursors else None,
        )


@strawberry.type(description="A page of documents, newest first (a Relay connection).")
class DocumentConnection:
    edges: list[DocumentEdge] = strawberry.field(description="The page's documents, in order.")
    page_info: PageInfo = strawberry.field(description="Where the page is in the whole list.")


_enum(
    retrieval.SearchMode,
    description="VECTOR: embeddings (HNSW, cosine). KEYWORD: full-text. HYBRID: both, fused "
    "by reciprocal rank fusion.",
    values={
        "VECTOR": "Passages whose embeddings are nearest the query's (cosine similarity).",
        "KEYWORD": "Passages that match the query's words (PostgreSQL full-text search, "
        "ranked by ts_rank_cd).",
        "HYBRID": "Both lists, fused by reciprocal rank fusion; the default.",
    },
)


@strawberry.input(description="Restricts a search; unset fields do not restrict.")
class SearchFilter:
    collection_ids: list[strawberry.ID] | None = strawberry.field(
        default=None,
        description="Only documents in these collections; `[]` matches nothing.",
    )
    document_ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="Only these documents."
    )
    filenames: list[str] | None = strawberry.field(
        default=None, description="Only documents with one of these exact filenames."
    )
    page_from: int | None = strawberry.field(
        default=None, description="Only pages from this one: 1-based, inclusive."
    )
    page_to: int | None = strawberry.field(
        default=None, description="Only pages up to this one: 1-based, inclusive."
    )
    created_after: datetime | None = strawberry.field(
        default=None, description="Only documents uploaded at or after this time (inclusive)."
    )
    created_before: datetime | None = strawberry.field(
        default=None, description="Only documents uploaded before this time (exclusive)."
    )


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
    text: str = strawberry.field(description="The passage (a chunk of the document).")
    snippet: str = strawberry.field(description="The text around the matches, marked **so**.")
    page: int = strawberry.field(description="1-based page number.")
    char_start: int = strawberry.field(description="Offset in the page's normalized text.")
    char_end: int = strawberry.field(
        description="End offset (exclusive) in the page's normalized text."
    )
    document: Document = strawberry.field(description="The document the passage is from.")

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
    document_id: strawberry.ID = strawberry.field(description="The cited document's id.")
    filename: str = strawberry.field(
        description="The cited document's filename when the answer was given."
    )
    page: int = strawberry.field(description="1-based page number.")
    char_start: int = strawberry.field(description="Offset in the page's normalized text.")
    char_end: int = strawberry.field(
        description="End offset (exclusive) in the page's normalized text."
    )

    @strawberry.field(
        description="The cited document as it is now; null when it has been deleted since "
        "(a stored conversation keeps its citations)."
    )
    async def document(self, info: Info) -> Document | None:
        found = await info.context.load_document(uuid.UUID(str(self.document_id)))
        return Document.from_model(found) if found is not None else None

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


SEQ = (
    "The event's number in its answer: 1 (the sources), 2, 3... Keep the last one received; "
    "`answerStream(messageId, afterSeq)` resumes after it."
)


@strawberry.type(description="First event of an answer: the numbered sources, [1] first.")
class AnswerSources:
    seq: int = strawberry.field(description=SEQ)
    message_id: strawberry.ID = strawberry.field(
        description="The answer's id (its message in the conversation): follow it, or resume "
        "it after a dropped connection, with `answerStream(messageId: ...)`."
    )
    sources: list[SearchHit] = strawberry.field(
        description="The passages the answer is grounded in, numbered [1], [2]... in this order."
    )
    conversation_id: strawberry.ID = strawberry.field(
        description="Pass it back as `conversationId` to ask a follow-up."
    )
    standalone_question: str = strawberry.field(
        description="The question retrieval used: a follow-up rewritten to stand alone."
    )


@strawberry.type(description="A piece of the answer, as the model streamed it.")
class AnswerToken:
    seq: int = strawberry.field(description=SEQ)
    text: str = strawberry.field(description="The next piece of the answer's text.")


PROMPT_TOKENS = "Tokens of the prompt, as the model counted them."
COMPLETION_TOKENS = "Tokens of the answer, as the model counted them."
LATENCY_MS = "Milliseconds from the question to the answer's first token."
DURATION_MS = "Milliseconds from the question to the answer's end."


@strawberry.type(description="Last event of a complete answer.")
class AnswerDone:
    seq: int = strawberry.field(description=SEQ)
    message_id: strawberry.ID = strawberry.field(
        description="The stored answer's id in its conversation."
    )
    citations: list[Citation] = strawberry.field(
        description="The sources the answer cites ([n] markers), in order of first citation."
    )
    grounded: bool = strawberry.field(
        description="False when sources were given and the answer cites none of them."
    )
    prompt_tokens: int = strawberry.field(description=PROMPT_TOKENS)
    completion_tokens: int = strawberry.field(description=COMPLETION_TOKENS)
    time_to_first_token_ms: float = strawberry.field(description=LATENCY_MS)
    total_ms: float = strawberry.field(description=DURATION_MS)


@strawberry.type(description="The answer stopped; `code` is an error code like UPSTREAM_ERROR.")
class AnswerError:
    seq: int = strawberry.field(
        description=SEQ + " An error that ends only this stream, not the answer (the "
        "credential of an `answerStream` expired), repeats the seq of the last event it sent."
    )
    code: str = strawberry.field(
        description="The error code, as in errors' `extensions.code` (UPSTREAM_ERROR...), or "
        "INTERRUPTED: the answer stopped before its end (the server stopped, it ran past "
        "ANSWER_MAX_SECONDS, or its client left with ANSWER_CONTINUE_ON_DISCONNECT=false)."
    )
    message: str = strawberry.field(description="What went wrong, for people.")


AnswerEvent = Annotated[
    AnswerSources | AnswerToken | AnswerDone | AnswerError,
    strawberry.union("AnswerEvent", description="An event of a streamed answer."),
]


@strawberry.type(description="Token counts and times of an answer.")
class Usage:
    prompt_tokens: int = strawberry.field(description=PROMPT_TOKENS)
    completion_tokens: int = strawberry.field(description=COMPLETION_TOKENS)
    time_to_first_token_ms: float = strawberry.field(description=LATENCY_MS)
    total_ms: float = strawberry.field(description=DURATION_MS)


@strawberry.type(description="A whole answer at once (`ask`), for clients that don't stream.")
class AskResult:
    text: str = strawberry.field(description="The answer, with [n] markers citing `sources`.")
    conversation_id: strawberry.ID = strawberry.field(
        description="Pass it back as `conversationId` to ask a follow-up."
    )
    message_id: strawberry.ID | None = strawberry.field(
        description="The stored answer's id; null when the answer stopped (see `error`)."
    )
    standalone_question: str = strawberry.field(
        description="The question retrieval used: a follow-up rewritten to stand alone."
    )
    sources: list[SearchHit] = strawberry.field(
        description="The passages the answer is grounded in, numbered [1], [2]... in this order."
    )
    citations: list[Citation] = strawberry.field(
        description="The sources the answer cites ([n] markers), in order of first citation."
    )
    grounded: bool = strawberry.field(
        description="False when sources were given and the answer cites none of them."
    )
    usage: Usage | None = strawberry.field(
        description="Token counts and times; null when the answer stopped."
    )
    error: AnswerError | None = strawberry.field(
        description="Set when the answer stopped after its sources (the text is partial)."
    )


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
        # Its sources are event 1, then each token: the error is the one after them.
        error=AnswerError(seq=len(result.tokens) + 2, code=failed.code, message=failed.message)
        if failed
        else None,
    )


def answer_event(item: Sequenced) -> AnswerEvent:
    """Converts a service event, with its number, to its GraphQL type."""
    seq, event = item.seq, item.event
    match event:
        case generation.Sources(hits=hits):
            return AnswerSources(
                seq=seq,
                message_id=strawberry.ID(str(event.message_id)),
                sources=[SearchHit.from_hit(h) for h in hits],
                conversation_id=strawberry.ID(str(event.conversation_id)),
                standalone_question=event.standalone_question,
            )
        case generation.Token(text=text):
            return AnswerToken(seq=seq, text=text)
        case generation.Done():
            return AnswerDone(
                seq=seq,
                message_id=strawberry.ID(str(event.message_id)),
                citations=[_citation(c) for c in event.citations],
                grounded=event.grounded,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                time_to_first_token_ms=event.time_to_first_token_ms,
                total_ms=event.total_ms,
            )
        case generation.Failed(code=code, message=message):
            return AnswerError(seq=seq, code=code, message=message)


@strawberry.type(description="A workspace (the tenant) and the caller's role in it.")
class Workspace:
    id: strawberry.ID = strawberry.field(
        description="Send it as `X-Workspace-Id` (or `workspaceId` in a WebSocket's "
        "`connection_init`) to act in this workspace."
    )
    name: str = strawberry.field(description="Its name, 1 to 200 characters.")
    personal: bool = strawberry.field(
        description="True for the caller's own workspace, made with the account; it cannot "
        "be shared."
    )
    role: models.Role = strawberry.field(description="The caller's role in it.")
    created_at: datetime = strawberry.field(description="When it was created.")

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
    user: User = strawberry.field(description="The member's account.")
    role: models.Role = strawberry.field(description="The member's role in the workspace.")
    joined_at: datetime = strawberry.field(description="When they joined.")

    @classmethod
    def from_view(cls, view: workspaces.MemberView) -> Member:
        return cls(
            user=User(id=strawberry.ID(str(view.user.id)), email=view.user.email),
            role=models.Role(view.membership.role),
            joined_at=view.membership.created_at,
        )


@strawberry.type(description="An invitation sent by email; its token is only in the email.")
class Invitation:
    id: strawberry.ID = strawberry.field(description="The invitation's id.")
    email: str = strawberry.field(description="Whom it was sent to.")
    role: models.Role = strawberry.field(description="The role it grants on acceptance.")
    expires_at: datetime = strawberry.field(
        description="When its token stops working (INVITATION_TTL after sending, 7 days by "
        "default)."
    )

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
    id: strawberry.ID = strawberry.field(
        description="Pass it as `collectionId` to upload into it, or in `collectionIds` to "
        "search it."
    )
    name: str = strawberry.field(description="Its name, 1 to 200 characters.")
    document_count: int = strawberry.field(description="Documents in it now.")
    created_at: datetime = strawberry.field(description="When it was created.")

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
    id: strawberry.ID = strawberry.field(description="Pass it to `revokeApiKey`.")
    name: str = strawberry.field(description="What its creator called it, to tell keys apart.")
    role: models.Role = strawberry.field(description="The role it acts with in its workspace.")
    prefix: str = strawberry.field(description="The secret's start (`rgk_` + 8 characters).")
    created_at: datetime = strawberry.field(description="When it was created.")
    expires_at: datetime | None = strawberry.field(
        description="When it stops working; null: never."
    )
    last_used_at: datetime | None = strawberry.field(description="Updated at most once a minute.")
    revoked_at: datetime | None = strawberry.field(
        description="When it was revoked (it no longer works); null while it is live."
    )

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
    api_key: ApiKey = strawberry.field(description="The new key.")
    secret: str = strawberry.field(
        description="Send as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`."
    )
