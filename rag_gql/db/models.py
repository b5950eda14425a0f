"""SQLAlchemy 2 models: the tables of DESIGN.md's data model.

Every tenant table carries `workspace_id`. The embedding column's dimension is fixed by the
migration from `EMBED_DIM`; the model leaves it open so one code base serves any dimension.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _referenced_in_workspace(table: str) -> UniqueConstraint:
    """`UNIQUE (id, workspace_id)`: what `_in_workspace` keys reference (`id` alone is the
    primary key; this only names the pair)."""
    return UniqueConstraint("id", "workspace_id", name=f"uq_{table}_id_workspace_id")


def _in_workspace(table: str, column: str, parent: str) -> ForeignKeyConstraint:
    """`(column, workspace_id)` references `parent (id, workspace_id)`, deletes cascading: a
    row cannot point at a parent in another workspace, and the key includes the column a
    distributed PostgreSQL would shard on (migration 0011)."""
    return ForeignKeyConstraint(
        [column, "workspace_id"],
        [f"{parent}.id", f"{parent}.workspace_id"],
        name=f"fk_{table}_{column}_{parent}",
        ondelete="CASCADE",
    )


class Role(enum.StrEnum):
    """A member's role in a workspace (the workspaces issue gives each its rights)."""

    OWNER = "OWNER"
    ADMIN = "ADMIN"
    EDITOR = "EDITOR"
    VIEWER = "VIEWER"


class DocumentStatus(enum.StrEnum):
    """Where a document is in ingestion."""

    QUEUED = "QUEUED"
    PARSING = "PARSING"
    EMBEDDING = "EMBEDDING"
    READY = "READY"
    FAILED = "FAILED"


class User(Base):
    """An account. `email` is stored lower-cased; `verified_at` is null until the OTP, and
    `password_hash` is the unusable `!` until then (`verifyEmail` sets the password).

    `token_version` is in every access token; bumping it (password change or reset) ends
    every session at once.
    """

    __tablename__ = "user"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = _now()


class EmailCode(Base):
    """A one-time code sent by email, stored as an HMAC; dies at `expires_at` or after N tries."""

    __tablename__ = "email_code"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(16))
    code_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = _now()


class CodeFailure(Base):
    """One failed attempt at a one-time code: wrong, dead, or for no such account.

    `account_hash` is an HMAC of the email under the OTP key, so the table names no address
    and unknown emails are counted as known ones are. Rows past the 24-hour window are dead.
    """

    __tablename__ = "code_failure"
    __table_args__ = (
        Index("ix_code_failure_account_hash_purpose", "account_hash", "purpose", "failed_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_hash: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16))
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


class Workspace(Base):
    """The tenant: documents, chunks, searches and answers belong to a workspace."""

    __tablename__ = "workspace"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    personal: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = _now()


class Membership(Base):
    """A user's role in a workspace."""

    __tablename__ = "membership"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspace.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = _now()


class Collection(Base):
    """A named group of documents inside a workspace."""

    __tablename__ = "collection"
    __table_args__ = (
        UniqueConstraint("workspace_id", "name", name="uq_collection_workspace_id_name"),
        _referenced_in_workspace("collection"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspace.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()


class Invitation(Base):
    """An emailed invitation to join a workspace; the token is stored as a SHA-256 hash."""

    __tablename__ = "invitation"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspace.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    """A workspace's key for services: `prefix` is shown, the secret is stored hashed."""

    __tablename__ = "api_key"
    __table_args__ = (_referenced_in_workspace("api_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspace.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class RefreshToken(Base):
    """An opaque refresh token (stored as SHA-256). Rotation keeps one `family_id` per login;
    presenting a used token revokes its whole family (OAuth 2.0 Security BCP, RFC 9700 4.14).
    """

    __tablename__ = "refresh_token"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class Document(Base):
    """An uploaded file; unique per workspace by the SHA-256 of its bytes."""

    __tablename__ = "document"
    __table_args__ = (
        UniqueConstraint("workspace_id", "sha256", name="uq_document_workspace_id_sha256"),
        _referenced_in_workspace("document"),
        _in_workspace("document", "collection_id", "collection"),
        Index("ix_document_workspace_id_created_at", "workspace_id", "created_at", "id"),
        # What the metadata filters' `@>` and `?` use (`repositories.metadata_sql`).
        Index("ix_document_metadata", "metadata", postgresql_using="gin"),
        # What the sweep of unfinished documents scans (`ingestion.recovery`).
        Index(
            "ix_document_unfinished",
            "workspace_id",
            "updated_at",
            postgresql_where=sql_text(
                "status IN ('QUEUED', 'PARSING', 'EMBEDDING') OR delete_requested_at IS NOT NULL"
            ),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspace.id", ondelete="CASCADE"))
    collection_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    filename: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    page_count: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # What `page_count` and `chunk.page` count: PAGE, SECTION or ROWS (`parsing.Unit`).
    unit: Mapped[str] = mapped_column(String(16), server_default="PAGE")
    pages_done: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_done: Mapped[int] = mapped_column(Integer, server_default="0")
    # Pages read by OCR at the last indexing (`services.ocr`).
    ocr_pages: Mapped[int] = mapped_column(Integer, server_default="0")
    # The file's own properties, read at indexing (`services.properties`); null when absent.
    title: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(Text)
    authored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The user's metadata: a flat JSON object (`services.metadata.check_metadata`). The
    # attribute is `meta`: `metadata` is the declarative base's.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    embed_model: Mapped[str | None] = mapped_column(String(255))
    # Set when a delete found the document held by its ingestion: hidden from then on, and
    # removed by the worker at its next batch (`ingestion.pipeline`).
    delete_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The fencing token of ingestion runs: raised by each run as it starts, and a run writes
    # the document only while it is still its own (`ingestion.pipeline`).
    ingest_lease: Mapped[int] = mapped_column(Integer, server_default="0")
    # Runs in a row that stopped without an outcome and were queued again (`ingestion.recovery`).
    ingest_recoveries: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class DocumentFilePart(Base):
    """Up to 1 MiB of an uploaded file's bytes; parts `seq` 0, 1, ... in order."""

    __tablename__ = "document_file_part"
    __table_args__ = (_in_workspace("document_file_part", "document_id", "document"),)

    document_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspace.id", ondelete="CASCADE"))
    data: Mapped[bytes] = mapped_column(LargeBinary)


KEYWORD_TEXT_TSVECTOR = (
    "setweight(to_tsvector('english', text), 'A')"
    " || setweight(to_tsvector('english', context), 'C')"
)
"""The expression of `chunk.tsv`: a chunk's keyword text is its context prefix and passage."""


class Chunk(Base):
    """A passage of a document: its page (1-based), character span in that page, embedding."""

    __tablename__ = "chunk"
    # No index on `embedding` here: each workspace above the exact-scan threshold has a
    # partial HNSW index of its own (migration 0016, `repositories/vector_indexes.py`).
    __table_args__ = (_in_workspace("chunk", "document_id", "document"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspace.id", ondelete="CASCADE"), index=True
    )
    document_id: Mapped[uuid.UUID] = mapped_column(index=True)
    # Copied from the document so filtered vector search filters inside the index scan.
    collection_id: Mapped[uuid.UUID | None] = mapped_column()
    ordinal: Mapped[int] = mapped_column(Integer)
    page: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[list[float]] = mapped_column(Vector())
    # The chunk's context prefix (its document's title and heading path, `services/context.py`):
    # embedded with `text` and part of the keyword text, never shown as the passage.
    context: Mapped[str] = mapped_column(Text, server_default="")
    # Generated by PostgreSQL from the keyword text, `context` then `text` (English stemming).
    tsv: Mapped[str] = mapped_column(TSVECTOR, Computed(KEYWORD_TEXT_TSVECTOR, persisted=True))


class Conversation(Base):
    """A thread of questions and answers, owned by a user or an API key, in a workspace."""

    __tablename__ = "conversation"
    __table_args__ = (
        _referenced_in_workspace("conversation"),
        _in_workspace("conversation", "api_key_id", "api_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspace.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column()
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Message(Base):
    """One turn: the user's question, or the assistant's answer with its sources and usage.

    `status` is `streaming` (its run is writing it: `content` grows batch by batch),
    `complete`, `interrupted` (stopped before its end) or `failed`.
    """

    __tablename__ = "message"
    # The unique key is the target of `answer_event`'s foreign key, which keeps an event in its
    # message's workspace (a foreign key is checked without row-level security).
    __table_args__ = (
        _in_workspace("message", "conversation_id", "conversation"),
        UniqueConstraint("workspace_id", "id", name="uq_message_workspace_id_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspace.id", ondelete="CASCADE"))
    conversation_id: Mapped[uuid.UUID] = mapped_column()
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    standalone_question: Mapped[str | None] = mapped_column(Text)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    time_to_first_token_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _now()


class AnswerEvent(Base):
    """A batch of an answer's events, `seq` to `last_seq` (1 is its sources; then one seq per
    token; the last is its end): what `answerStream` replays (`services.answer_runs`).

    `kind` is `sources`, `tokens`, `done` or `error`; `payload` is the batch's JSON (the
    sources with their documents as they were, the tokens' texts, the end's figures).
    """

    __tablename__ = "answer_event"
    __table_args__ = (
        ForeignKeyConstraint(
            ["workspace_id", "message_id"],
            ["message.workspace_id", "message.id"],
            name="fk_answer_event_workspace_id_message",
            ondelete="CASCADE",
        ),
    )

    # The workspace leads the primary key: the key a PostgreSQL sharded by workspace needs.
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspace.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
