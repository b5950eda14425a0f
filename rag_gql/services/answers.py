"""An answer's events, their numbers (`seq`) and their stored form.

An answer is a sequence of events numbered from 1: `Sources` (1), one `Token` per streamed
piece (2, 3, ...), then its end, `Done` or `Failed`. `answer_runs` stores them in batches
(`answer_event` rows: `sources`, `tokens`, `done`, `error`) and replays them from any
process; `payload`/`from_batch` convert between the two.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rag_gql.db.models import AnswerEvent as Batch
from rag_gql.db.models import Document
from rag_gql.services.retrieval import SearchHit

INTERRUPTED = "INTERRUPTED"
"""`Failed.code` of an answer stopped before its end (shutdown, ANSWER_MAX_SECONDS, or its
client leaving with ANSWER_CONTINUE_ON_DISCONNECT=false)."""


@dataclass(frozen=True, slots=True)
class Citation:
    """A numbered source the answer cites, and where it is: document, page, character span."""

    number: int
    document_id: uuid.UUID
    filename: str
    page: int
    char_start: int
    char_end: int

    def as_json(self) -> dict[str, Any]:
        """The form stored with the message."""
        return {
            "number": self.number,
            "documentId": str(self.document_id),
            "filename": self.filename,
            "page": self.page,
            "charStart": self.char_start,
            "charEnd": self.char_end,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Citation:
        """The inverse of `as_json`."""
        return cls(
            number=int(data["number"]),
            document_id=uuid.UUID(str(data["documentId"])),
            filename=str(data["filename"]),
            page=int(data["page"]),
            char_start=int(data["charStart"]),
            char_end=int(data["charEnd"]),
        )


@dataclass(frozen=True, slots=True)
class Sources:
    """The passages the answer is grounded in, numbered from 1 in this order, the stand-alone
    question they were retrieved for, and the answer's message id; `question` and `asked_at`
    are stored with it (the question's message)."""

    hits: list[SearchHit]
    conversation_id: uuid.UUID
    standalone_question: str
    message_id: uuid.UUID
    question: str = ""
    asked_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Token:
    """One piece of the answer, as the model streamed it."""

    text: str


@dataclass(frozen=True, slots=True)
class Done:
    """The end: citations, whether any source was cited, token counts, times in ms."""

    message_id: uuid.UUID
    citations: list[Citation]
    grounded: bool
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The answer stopped: `code` is a GraphQL error code (or `INTERRUPTED`), `message` says
    why."""

    code: str
    message: str


AnswerEvent = Sources | Token | Done | Failed


@dataclass(frozen=True, slots=True)
class Sequenced:
    """An event and its number in its answer (1: the sources)."""

    seq: int
    event: AnswerEvent

    @property
    def terminal(self) -> bool:
        """The answer's last event: nothing comes after it."""
        return isinstance(self.event, Done | Failed)


def citation(number: int, hit: SearchHit) -> Citation:
    """Source `number` of an answer: `hit`'s document and place."""
    return Citation(
        number=number,
        document_id=hit.document.id,
        filename=hit.document.filename,
        page=hit.page,
        char_start=hit.char_start,
        char_end=hit.char_end,
    )


_DOCUMENT_FIELDS = (
    "collection_id",
    "filename",
    "sha256",
    "media_type",
    "size_bytes",
    "unit",
    "page_count",
    "pages_done",
    "chunk_count",
    "chunks_done",
    "status",
    "error",
    "embed_model",
)


def _hit_json(hit: SearchHit) -> dict[str, Any]:
    doc = hit.document
    document: dict[str, Any] = {name: getattr(doc, name) for name in _DOCUMENT_FIELDS}
    document.update(
        id=str(doc.id),
        workspace_id=str(doc.workspace_id),
        collection_id=str(doc.collection_id) if doc.collection_id else None,
        created_at=doc.created_at.isoformat(),
        updated_at=doc.updated_at.isoformat(),
    )
    return {
        "chunk_id": hit.chunk_id,
        "score": hit.score,
        "text": hit.text,
        "snippet": hit.snippet,
        "page": hit.page,
        "char_start": hit.char_start,
        "char_end": hit.char_end,
        "vector_rank": hit.vector_rank,
        "keyword_rank": hit.keyword_rank,
        "ordinal": hit.ordinal,
        "last_ordinal": hit.last_ordinal,
        "rerank_score": hit.rerank_score,
        "reranked": hit.reranked,
        "document": document,
    }


def _hit_from_json(data: dict[str, Any]) -> SearchHit:
    d = data["document"]
    document = Document(
        **{name: d[name] for name in _DOCUMENT_FIELDS},
        id=uuid.UUID(d["id"]),
        workspace_id=uuid.UUID(d["workspace_id"]),
        created_at=datetime.fromisoformat(d["created_at"]),
        updated_at=datetime.fromisoformat(d["updated_at"]),
    )
    if d["collection_id"] is not None:
        document.collection_id = uuid.UUID(d["collection_id"])
    return SearchHit(
        chunk_id=int(data["chunk_id"]),
        score=float(data["score"]),
        text=str(data["text"]),
        snippet=str(data["snippet"]),
        page=int(data["page"]),
        char_start=int(data["char_start"]),
        char_end=int(data["char_end"]),
        document=document,
        vector_rank=data["vector_rank"],
        keyword_rank=data["keyword_rank"],
        ordinal=int(data["ordinal"]),
        last_ordinal=data["last_ordinal"],
        # Sources stored before reranking existed have neither.
        rerank_score=data.get("rerank_score"),
        reranked=bool(data.get("reranked", False)),
    )


def payload(event: AnswerEvent) -> tuple[str, dict[str, Any]]:
    """The stored form of one event that is not a token: `(kind, payload)`."""
    match event:
        case Sources():
            return "sources", {
                "conversation_id": str(event.conversation_id),
                "standalone_question": event.standalone_question,
                "hits": [_hit_json(hit) for hit in event.hits],
            }
        case Done():
            return "done", {
                "citations": [c.as_json() for c in event.citations],
                "grounded": event.grounded,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "time_to_first_token_ms": event.time_to_first_token_ms,
                "total_ms": event.total_ms,
            }
        case Failed():
            return "error", {"code": event.code, "message": event.message}
        case Token():
            raise ValueError("tokens are stored in batches (`tokens_payload`)")


def tokens_payload(texts: list[str]) -> dict[str, Any]:
    """The stored form of consecutive tokens."""
    return {"texts": texts}


def from_batch(row: Batch) -> list[Sequenced]:
    """The events of a stored batch, numbered.

    Raises:
        ValueError: not a batch `payload`/`tokens_payload` wrote.
    """
    data = row.payload
    match row.kind:
        case "sources":
            event: AnswerEvent = Sources(
                hits=[_hit_from_json(hit) for hit in data["hits"]],
                conversation_id=uuid.UUID(data["conversation_id"]),
                standalone_question=str(data["standalone_question"]),
                message_id=row.message_id,
            )
        case "tokens":
            return [Sequenced(row.seq + i, Token(str(t))) for i, t in enumerate(data["texts"])]
        case "done":
            event = Done(
                message_id=row.message_id,
                citations=[Citation.from_json(c) for c in data["citations"]],
                grounded=bool(data["grounded"]),
                prompt_tokens=int(data["prompt_tokens"]),
                completion_tokens=int(data["completion_tokens"]),
                time_to_first_token_ms=float(data["time_to_first_token_ms"]),
                total_ms=float(data["total_ms"]),
            )
        case "error":
            event = Failed(code=str(data["code"]), message=str(data["message"]))
        case _:
            raise ValueError(f"unknown answer event batch {row.kind!r}")
    return [Sequenced(row.seq, event)]
