"""Answers: the streamed events (`AnswerEvent`), the whole answer (`AskResult`) and
citations, with their conversion from the generation service's results."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import strawberry

from rag_gql.graphql.context import Info
from rag_gql.graphql.types.documents import Document
from rag_gql.graphql.types.search import SearchHit
from rag_gql.services import documents, generation
from rag_gql.services.answers import Sequenced


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

    @strawberry.field(
        description="The cited document's `fileUrl`, with `#page=N` for a paged format (PDF: "
        "its open parameters, RFC 8118) so that a viewer opens the cited page; without a "
        "fragment for the other formats, and for a document deleted since."
    )
    async def url(self, info: Info) -> str:
        found = await info.context.load_document(uuid.UUID(str(self.document_id)))
        media_type = found.media_type if found is not None else None
        return documents.page_url(self.document_id, media_type, self.page)

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
    "`answerStream(messageId, afterSeq)` resumes after it. Each streamed piece has its "
    "number: an AnswerToken that carries several (they arrived together) has the last one's, "
    "so numbers may skip."
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


@strawberry.type(
    description="The next piece of the answer, as the model streamed it: one or more of its "
    "tokens (those that arrived within ANSWER_TOKEN_WINDOW_MS of each other go together)."
)
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
        error=AnswerError(seq=result.failed_seq, code=failed.code, message=failed.message)
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
