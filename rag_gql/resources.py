"""The long-lived resources of a process, built once in the app's lifespan.

`open_services(settings)` builds the engine, the Ollama HTTP client, the mailer and the
services over them, and closes them on exit. Tests and tools build their own with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.errors import DomainError
from rag_gql.ingestion.queue import conninfo
from rag_gql.ingestion.submit import IngestionService
from rag_gql.observability.metrics import Metrics
from rag_gql.observability.upstream import ObservedTransport
from rag_gql.providers.mail import Mailer, make_mailer
from rag_gql.providers.ollama import EmbeddingSizeMismatch, OllamaClient
from rag_gql.providers.rerank import RerankClient
from rag_gql.repositories import catalog
from rag_gql.services.answer_runs import AnswerRuns
from rag_gql.services.api_keys import ApiKeyService
from rag_gql.services.auth import AuthService
from rag_gql.services.collections import CollectionService
from rag_gql.services.conversations import ConversationService
from rag_gql.services.document_events import DocumentEvents
from rag_gql.services.documents import DocumentService
from rag_gql.services.generation import GenerationService
from rag_gql.services.ocr import OcrAvailability, OcrMode, OcrOptions, availability, install_hint
from rag_gql.services.rate_limits import Quotas, RateLimiter, Slots
from rag_gql.services.retrieval import RetrievalService
from rag_gql.services.shared_caps import SharedSlots, open_leases
from rag_gql.services.workspaces import WorkspaceService

if TYPE_CHECKING:
    from rag_gql.observability.otel import Tracing

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The configuration cannot work (e.g. EMBED_DIM disagrees with the model or database)."""


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request needs; one per process."""

    settings: Settings
    db: Database
    ollama: OllamaClient
    mailer: Mailer
    auth: AuthService
    api_keys: ApiKeyService
    documents: DocumentService
    document_events: DocumentEvents
    ingestion: IngestionService
    retrieval: RetrievalService
    generation: GenerationService
    workspaces: WorkspaceService
    conversations: ConversationService
    collections: CollectionService
    quotas: Quotas
    ws_operations: SharedSlots
    """Live WebSocket operations per caller, all sockets together (of every replica, with
    Redis)."""
    websockets_per_user: SharedSlots
    """Open WebSocket connections per caller (`caller_key`)."""
    websockets_per_ip: SharedSlots
    """Open WebSocket connections per client IP."""
    metrics: Metrics = field(default_factory=Metrics)
    ocr: OcrAvailability | None = None
    """Whether Tesseract's language data was found at start-up; None with `OCR=off`."""


@asynccontextmanager
async def open_services(
    settings: Settings, *, check_upstream: bool = True, tracing: Tracing | None = None
) -> AsyncIterator[Services]:
    """Builds the services for `settings.database_url` and closes them on exit.

    With `check_upstream`, checks the database's embedding column and Ollama's embedding
    size against `EMBED_DIM` (an unreachable Ollama is logged, not fatal). With `tracing`,
    the engine's statements and the Ollama client's calls are traced.

    Raises:
        StartupError: when EMBED_DIM disagrees with the database or the model.
    """
    if not settings.database_url:
        raise StartupError("No database URL: set DATABASE_URL or use `rag-gql serve`")
    ocr = await _check_ocr(settings)
    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        statement_timeout=settings.db_statement_timeout,
        lock_timeout=settings.db_lock_timeout,
        idle_in_transaction_timeout=settings.db_idle_in_transaction_timeout,
    )
    events = DocumentEvents(conninfo(settings.database_url), db=db)
    runs = AnswerRuns(settings=settings, db=db, dsn=conninfo(settings.database_url))
    timeout = httpx.Timeout(settings.ollama_timeout, connect=settings.ollama_connect_timeout)
    auth: AuthService | None = None
    metrics = Metrics()
    transport: httpx.AsyncBaseTransport = ObservedTransport(httpx.AsyncHTTPTransport(), metrics)
    if tracing is not None:
        transport = tracing.http_transport(transport)
        tracing.instrument_engine(db.engine)
    async with (
        open_leases(settings) as leases,
        httpx.AsyncClient(
            base_url=settings.ollama_url, timeout=timeout, transport=transport
        ) as http,
        AsyncExitStack() as stack,
    ):
        try:
            ollama = OllamaClient(
                http,
                embed_model=settings.ollama_embed_model,
                chat_model=settings.ollama_chat_model,
                batch_size=settings.embed_batch_size,
                embed_dim=settings.embed_dim,
                embed_attempts=settings.ollama_embed_attempts,
                breaker_threshold=settings.ollama_breaker_threshold,
                breaker_reset=settings.ollama_breaker_reset,
            )
            if check_upstream:
                await _check_database(db, settings)
                await _check_ollama(ollama, settings)
            reranker = await _open_reranker(settings, stack, tracing)
            retrieval = RetrievalService(
                settings=settings, db=db, ollama=ollama, reranker=reranker, metrics=metrics
            )
            mailer = make_mailer(settings)
            limiter = RateLimiter.from_settings(settings)
            auth = AuthService(settings=settings, db=db, mailer=mailer, ratelimiter=limiter)
            yield Services(
                settings=settings,
                db=db,
                ollama=ollama,
                mailer=mailer,
                auth=auth,
                api_keys=ApiKeyService(db=db),
                documents=DocumentService(db=db, max_metadata_bytes=settings.max_metadata_bytes),
                document_events=events,
                ingestion=IngestionService(settings=settings, db=db),
                retrieval=retrieval,
                generation=GenerationService(
                    settings=settings,
                    db=db,
                    retrieval=retrieval,
                    ollama=ollama,
                    runs=runs,
                    leases=leases,
                ),
                conversations=ConversationService(db=db),
                workspaces=WorkspaceService(settings=settings, db=db, mailer=mailer),
                collections=CollectionService(db=db),
                quotas=Quotas.from_settings(settings),
                ws_operations=SharedSlots(
                    Slots(
                        settings.ws_max_operations_per_user,
                        what="live operations",
                        setting="WS_MAX_OPERATIONS_PER_USER",
                    ),
                    name="operations",
                    leases=leases,
                ),
                websockets_per_user=SharedSlots(
                    Slots(
                        settings.max_websockets_per_user,
                        what="WebSocket connections of this user",
                        setting="MAX_WEBSOCKETS_PER_USER",
                    ),
                    name="connections-user",
                    leases=leases,
                ),
                websockets_per_ip=SharedSlots(
                    Slots(
                        settings.max_websockets_per_ip,
                        what="WebSocket connections from this address",
                        setting="MAX_WEBSOCKETS_PER_IP",
                    ),
                    name="connections-ip",
                    leases=leases,
                ),
                metrics=metrics,
                ocr=ocr,
            )
        finally:
            if auth is not None:
                await auth.aclose()  # emails still being sent in the background
            await runs.aclose()  # answers still running: stored `interrupted`
            await events.aclose()
            await db.dispose()


async def _open_reranker(
    settings: Settings, stack: AsyncExitStack, tracing: Tracing | None
) -> RerankClient | None:
    """The reranking client of `RERANK_URL` (its HTTP client closed by `stack`), or None."""
    if not settings.rerank_url:
        return None
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport()
    if tracing is not None:
        transport = tracing.http_transport(transport)
    http = await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=settings.rerank_url,
            timeout=httpx.Timeout(settings.rerank_timeout),
            transport=transport,
        )
    )
    log.info("Reranking with %r at %s", settings.rerank_model, settings.rerank_url)
    return RerankClient(
        http,
        model=settings.rerank_model,
        api=settings.rerank_api,
        timeout=settings.rerank_timeout,
        attempts=settings.rerank_attempts,
        breaker_threshold=settings.rerank_breaker_threshold,
        breaker_reset=settings.rerank_breaker_reset,
    )


async def _check_ocr(settings: Settings) -> OcrAvailability | None:
    """Looks for Tesseract's language data; logs a warning, with what to install, when the
    pages that need OCR would fail."""
    options = OcrOptions.from_settings(settings)
    if options.mode is OcrMode.OFF:
        return None
    found = await asyncio.to_thread(availability, options)
    if found.available:
        log.info(
            "OCR=%s with Tesseract's data in %s (%s)",
            options.mode,
            found.tessdata,
            options.languages,
        )
    else:
        log.warning(
            "TESSERACT NOT FOUND (language data for %s): documents with pages that need "
            "OCR will fail; %s",
            "+".join(found.missing_languages),
            install_hint(options),
        )
    return found


async def _check_database(db: Database, settings: Settings) -> None:
    async with db.transaction() as session:
        dim = await catalog.embedding_dimension(session)
    if dim != settings.embed_dim:
        raise StartupError(
            f"EMBED_DIM is {settings.embed_dim} but the database stores {dim}-dimensional "
            "embeddings; set EMBED_DIM to match, or use a new database"
        )


async def _check_ollama(ollama: OllamaClient, settings: Settings) -> None:
    try:
        (probe,) = await ollama.embed(["dimension probe"])
    except EmbeddingSizeMismatch as exc:
        probe = [0.0] * exc.got
    except DomainError as exc:
        log.warning(
            "OLLAMA NOT AVAILABLE at %s (%s). The server starts anyway; uploads, search and "
            "answers will fail with UPSTREAM_UNAVAILABLE until it is reachable. "
            "Is `ollama serve` running, and has `ollama pull %s` been done?",
            settings.ollama_url,
            exc,
            settings.ollama_embed_model,
        )
        return
    if len(probe) != settings.embed_dim:
        raise StartupError(
            f"EMBED_DIM is {settings.embed_dim} but {settings.ollama_embed_model!r} returns "
            f"{len(probe)}-dimensional embeddings; set EMBED_DIM={len(probe)} (with a new "
            "database) or choose another OLLAMA_EMBED_MODEL"
        )
    log.info("Ollama at %s answers; embeddings have %d dimensions", settings.ollama_url, len(probe))
