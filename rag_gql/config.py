"""Settings: the only reader of the environment (and of a `.env` file).

The names are a contract with deployments: `DATABASE_URL`, `DATA_DIR`, `OLLAMA_URL`, ...
Every field's `description` is its documentation: `docs/configuration.md` is generated from
this class (`rag-gql export-config-docs --output docs/configuration.md`, see
`rag_gql.config_docs`), and a test keeps the two equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag_gql.keyfile import read_or_create_secret

MIN_JWT_SECRET_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key has at least 256 bits."""


class Settings(BaseSettings):
    """Every setting of the service, read from the environment and `.env`.

    Units: sizes in characters, durations in seconds unless the name says otherwise.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset starts an embedded server under DATA_DIR.",
    )
    data_dir: Path = Field(
        default=Path(".rag-gql"),
        description="Folder of the embedded database (`pgdata/`, without DATABASE_URL) and of "
        "the JWT secret generated when JWT_SECRET is unset.",
    )
    db_pool_size: int = Field(
        default=10, gt=0, description="Database connections each process keeps open."
    )
    db_max_overflow: int = Field(
        default=10, ge=0, description="Connections opened beyond DB_POOL_SIZE under load."
    )
    db_pool_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a free connection before SERVER_BUSY.",
    )
    db_statement_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds one SQL statement of a request may run before SERVER_BUSY "
        "(PostgreSQL statement_timeout; 0: no limit). The ingestion worker has none.",
    )
    db_lock_timeout: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a request's statement may wait for a row or table lock before "
        "SERVER_BUSY (lock_timeout; 0: no limit). The ingestion worker has none.",
    )
    db_idle_in_transaction_timeout: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a request's connection may sit idle inside a transaction before "
        "PostgreSQL closes it (idle_in_transaction_session_timeout; 0: no limit).",
    )

    ollama_url: str = Field(
        default="http://127.0.0.1:11434", description="Base URL of the Ollama server."
    )
    ollama_embed_model: str = Field(
        default="nomic-embed-text",
        description="Ollama model for embeddings (`/api/embed`); after changing it, "
        "`rag-gql reindex --all`.",
    )
    ollama_chat_model: str = Field(
        default="llama3.2", description="Ollama model for answers (`/api/chat`)."
    )
    ollama_timeout: float = Field(
        default=120.0, gt=0, description="Seconds Ollama may be silent (between two reads)."
    )
    ollama_connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to connect.")
    ollama_embed_attempts: int = Field(
        default=3,
        ge=1,
        description="Tries of an embedding request that could not reach Ollama (retried with "
        "exponential backoff and jitter; chat is not retried).",
    )
    ollama_breaker_threshold: int = Field(
        default=5,
        ge=1,
        description="Failed Ollama calls in a row (unreachable, timed out) that open the circuit.",
    )
    ollama_breaker_reset: float = Field(
        default=30.0,
        gt=0,
        description="Seconds an open circuit fails calls at once before one is let through.",
    )
    embed_dim: int = Field(
        default=768,
        gt=0,
        le=16000,
        description="Size of the embeddings; checked at start-up against the model and the "
        "database's column (a mismatch stops the server, saying which).",
    )
    embed_batch_size: int = Field(default=64, gt=0, description="Texts per `/api/embed` request.")

    chunk_size: int = Field(
        default=1000, ge=100, description="Characters per chunk (a searchable passage)."
    )
    chunk_overlap: int = Field(
        default=150,
        ge=0,
        description="Characters a chunk shares with the one before it; below CHUNK_SIZE.",
    )
    context_prefix: Literal["on", "keyword", "off"] = Field(
        default="keyword",
        description="A chunk's context: its document's title and the heading path it sits "
        "under (PDF outline, DOCX/HTML/Markdown headings, sheet names), at most 200 "
        "characters. `on`: it starts the chunk's embedding input and its keyword text; "
        "`keyword`: its keyword text only; `off`: neither. The passage shown in results is "
        "the chunk's text alone. Documents ingested before a change keep theirs until "
        "reindexed.",
    )

    password_hash_profile: Literal["RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY", "CHEAPEST"] = (
        Field(
            default="RFC_9106_LOW_MEMORY",
            description="argon2-cffi parameter profile; CHEAPEST is for tests only.",
        )
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 key of the access tokens, at least 32 bytes (RFC 7518 3.2); unset: "
        "generated once into DATA_DIR/jwt_secret. Give every replica the same one.",
    )
    access_token_ttl: int = Field(
        default=900, gt=0, description="Seconds an access token stays valid."
    )
    refresh_token_ttl: int = Field(
        default=30 * 86400,
        gt=0,
        description="Seconds a refresh token stays valid (each works once; reusing one ends "
        "its session).",
    )

    otp_ttl: int = Field(default=600, gt=0, description="Seconds an emailed code stays valid.")
    otp_max_attempts: int = Field(
        default=5, gt=0, description="Wrong tries after which an emailed code stops working."
    )
    otp_daily_max_attempts: int = Field(
        default=20,
        gt=0,
        description="Wrong codes an email may present per purpose (verify, reset) in 24 hours.",
    )
    rate_limit_storage_uri: str = Field(
        default="memory://",
        description="Where rate limits count (`limits` storage URI): `memory://` per "
        "process; `redis://host:6379` (the `rag-gql[redis]` extra) to share them between "
        "replicas, and with them the caps on what runs at once (MAX_ANSWER_STREAMS_PER_USER, "
        "WS_MAX_OPERATIONS_PER_USER, MAX_WEBSOCKETS_PER_USER, MAX_WEBSOCKETS_PER_IP).",
    )
    shared_slots_lease_ttl: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="With Redis: seconds a replica's hold on a cap (a stream, a connection) "
        "lives without its refresh; a replica that dies gives its places back this long after.",
    )
    rate_limit_auth_per_ip: str = Field(
        default="30/minute",
        description="login, register, verifyEmail and the password reset, per client IP and "
        "operation.",
    )
    rate_limit_auth_per_account: str = Field(
        default="10/minute",
        description="login, register, verifyEmail and the password reset, per email and operation.",
    )
    invitation_ttl: int = Field(
        default=7 * 86400, gt=0, description="Seconds an emailed invitation stays valid."
    )
    # Per-user and per-workspace limits of the expensive operations (services/rate_limits.py), in
    # `limits` notation; `answer` and `ask` share theirs.
    rate_limit_search_per_user: str = Field(
        default="60/minute", description="`search` calls per user (each alias counts)."
    )
    rate_limit_search_per_workspace: str = Field(
        default="600/minute", description="`search` calls per workspace (each alias counts)."
    )
    rate_limit_file_per_user: str = Field(
        default="600/minute",
        description="`GET /documents/{id}/file` requests per user (a PDF viewer asks for "
        "ranges of a file, several requests per document opened).",
    )
    rate_limit_file_per_workspace: str = Field(
        default="6000/minute",
        description="`GET /documents/{id}/file` requests per workspace.",
    )
    rate_limit_answer_per_user: str = Field(
        default="20/minute", description="`answer` and `ask` calls together, per user."
    )
    rate_limit_answer_per_workspace: str = Field(
        default="200/minute", description="`answer` and `ask` calls together, per workspace."
    )
    rate_limit_upload_per_user: str = Field(
        default="60/minute", description="`uploadDocument` calls per user."
    )
    rate_limit_upload_per_workspace: str = Field(
        default="600/minute", description="`uploadDocument` calls per workspace."
    )
    # Per-user (an API key counts as the user who created it) and per-workspace limits of the
    # operations that cost work or send mail; `createWorkspace` and `createApiKey` only per user.
    rate_limit_reindex_per_user: str = Field(
        default="30/minute", description="`reindexDocument` calls per user."
    )
    rate_limit_reindex_per_workspace: str = Field(
        default="300/minute", description="`reindexDocument` calls per workspace."
    )
    rate_limit_create_workspace_per_user: str = Field(
        default="10/hour", description="`createWorkspace` calls per user."
    )
    rate_limit_create_api_key_per_user: str = Field(
        default="20/hour", description="`createApiKey` calls per user."
    )
    rate_limit_invite_per_user: str = Field(
        default="30/hour", description="`inviteMember` calls (emails sent) per user."
    )
    rate_limit_invite_per_workspace: str = Field(
        default="100/hour", description="`inviteMember` calls (emails sent) per workspace."
    )
    max_answer_streams_per_user: int = Field(
        default=3, ge=1, description="Answers (`answer`, `ask`) a user may have running at once."
    )
    max_answers_retrieving: int = Field(
        default=8,
        ge=1,
        description="Answers of this process in their retrieval step at once; more wait in "
        "line (first come, first served), so a burst queues instead of exhausting the "
        "database pool. Their streaming is not limited by this.",
    )
    answer_continue_on_disconnect: bool = Field(
        default=True,
        description="An answer whose client leaves (closed socket, stopped subscription) goes "
        "on to its end and is stored whole, to be read with `answerStream` from any replica; "
        "false: it stops there, stored `interrupted`. A running answer holds one of its "
        "user's MAX_ANSWER_STREAMS_PER_USER places either way.",
    )
    answer_max_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Seconds an answer may run from its sources to its end; past them it "
        "stops, stored `interrupted` (an AnswerError INTERRUPTED).",
    )
    answer_token_window_ms: float = Field(
        default=20.0,
        ge=0,
        description="Milliseconds a streamed answer's tokens wait after the last token event "
        "sent, for more to join them: the tokens that arrive within them go to the client as "
        "one AnswerToken (its `seq` that of the last), which spares a GraphQL event per token "
        "under load. The first token never waits. 0: every piece as its own event.",
    )

    smtp_host: str | None = Field(
        default=None,
        description="SMTP server for the emails (codes, invitations); unset: each email is "
        "printed in the server log instead, codes included (local use only).",
    )
    smtp_port: int = Field(default=587, description="SMTP port.")
    smtp_username: str | None = Field(
        default=None, description="SMTP login; unset: no authentication."
    )
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    smtp_starttls: bool = Field(
        default=False,
        description="Upgrade the SMTP connection with STARTTLS (set it for any server that "
        "is not on this host or its private network; implicit TLS on 465 is not supported).",
    )
    smtp_timeout: float = Field(default=30.0, description="Seconds an SMTP exchange may take.")
    mail_from: str = Field(
        default="rag-gql <no-reply@localhost>", description="The emails' From address."
    )

    # GraphQL abuse limits (OWASP GraphQL cheat sheet); see rag_gql/graphql/limits.py.
    graphql_introspection: bool = Field(
        default=True,
        description="Allow __schema/__type (GraphiQL needs it); turn off in production.",
    )
    graphql_suggestions: bool = Field(
        default=False, description='"Did you mean ...?" in validation errors (development).'
    )
    graphql_max_depth: int = Field(default=10, gt=0, description="Nesting of selections.")
    graphql_max_aliases: int = Field(default=15, ge=0, description="Aliased fields per document.")
    graphql_max_tokens: int = Field(
        default=2000, gt=0, description="Lexical tokens per document (comments not counted)."
    )
    graphql_max_length: int = Field(default=20_000, gt=0, description="Characters per document.")
    graphql_max_cost: int = Field(
        default=2000, gt=0, description="Estimated fields resolved (lists times their size)."
    )

    # WebSocket limits (rag_gql/graphql/websocket.py).
    ws_connection_init_timeout: float = Field(
        default=3.0,
        gt=0,
        le=10,
        description="Seconds a new socket has to send connection_init (then closed with 4408).",
    )
    ws_max_operations_per_connection: int = Field(
        default=10, ge=1, description="Live operations (subscriptions) on one socket."
    )
    ws_max_operations_per_user: int = Field(
        default=20,
        ge=1,
        description="Live operations of one user (and their API keys), all sockets and HTTP "
        "subscription streams together.",
    )
    max_websockets_per_user: int = Field(
        default=10,
        ge=1,
        description="Open WebSocket connections of one user (with their API keys), HTTP "
        "subscription streams included (all replicas together with Redis, see "
        "RATE_LIMIT_STORAGE_URI); one more is closed at connection_init with 4429 "
        "(a stream: RATE_LIMITED).",
    )
    max_websockets_per_ip: int = Field(
        default=50,
        ge=1,
        description="Open WebSocket connections from one client IP, HTTP subscription "
        "streams included (all replicas together with Redis); one more is closed at "
        "connection_init with 4429 (a stream: RATE_LIMITED). The IP is the one uvicorn "
        "sees: behind a proxy, set FORWARDED_ALLOW_IPS to its address.",
    )
    ws_send_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a message (or an HTTP subscription's part) may wait for a client "
        "that does not read; then the socket (or connection) is dropped.",
    )
    ws_ping_interval: float = Field(
        default=20.0, gt=0, description="Seconds between the server's WebSocket pings."
    )
    ws_ping_timeout: float = Field(
        default=20.0, gt=0, description="Seconds for the pong before the socket is closed (1011)."
    )

    subscription_reauth_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between re-checks of a live subscription's credential (token "
        "expiry, membership, API key revocation); one that fails ends the stream with "
        "UNAUTHENTICATED or FORBIDDEN.",
    )

    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console in a terminal, JSON otherwise."
    )

    metrics_host: str = Field(
        default="127.0.0.1",
        description="Interface of the operations listener (`/readyz`, `/metrics`): keep it off "
        "the public network (loopback, or the monitoring network's address).",
    )
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the operations listener of `rag-gql serve` and `rag-gql worker` "
        "(each process on a host needs its own); 0: no listener, hence no readiness or metrics "
        "endpoint.",
    )

    shutdown_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds running requests, answers and ingestion jobs get to finish on "
        "SIGTERM.",
    )
    max_upload_bytes: int = Field(
        default=100 * 1024 * 1024,
        gt=0,
        description="Bytes of one uploaded file (BAD_USER_INPUT past it); a multipart body "
        "past it plus 64 KiB gets HTTP 413 as it streams, before authentication.",
    )
    max_metadata_bytes: int = Field(
        default=16 * 1024,
        gt=0,
        le=1024 * 1024,
        description="Bytes of a document's user metadata as compact UTF-8 JSON (`uploadDocument`'s "
        "and `updateDocumentMetadata`'s `metadata`, `rag-gql ingest --metadata` and sidecars); "
        "past it, BAD_USER_INPUT.",
    )
    graphql_max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Bytes of a request body that is not a multipart upload; a larger one is "
        "refused with 413 as it streams, before authentication.",
    )
    workspace_max_bytes: int = Field(
        default=10 * 1024**3,
        gt=0,
        description="Bytes of original files a workspace may store, all documents together "
        "(uploads past it: QUOTA_EXCEEDED).",
    )
    workspace_max_documents: int = Field(
        default=100_000, gt=0, description="Documents a workspace may hold (then QUOTA_EXCEEDED)."
    )
    # Ingestion: a procrastinate job queue in PostgreSQL (rag_gql/ingestion/queue.py).
    max_pages: int = Field(
        default=5000, gt=0, description="Most pages (or sections, row blocks) an upload may have."
    )
    worker_in_process: bool = Field(
        default=True, description="`rag-gql serve` runs an ingestion worker in its own process."
    )
    worker_concurrency: int = Field(
        default=3, gt=0, description="Documents a worker ingests at once."
    )
    parse_processes: int | None = Field(
        default=None,
        ge=0,
        description="Processes that parse uploads and extract text: unset means half the CPUs "
        "(at least one; embedding, COPY and index upkeep need the rest); 0 means a thread of "
        "the worker itself, without PARSE_TIMEOUT or PARSE_MAX_MEMORY, so that a hostile "
        "upload can stall the process (tests only).",
    )
    parse_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds an extraction process may spend on one step of a document "
        "(counting its units, or one batch of INGEST_PAGE_BATCH units); past it the "
        "document is FAILED and the process replaced.",
    )
    parse_max_memory: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Bytes of address space (RLIMIT_AS) of each extraction process, the "
        "parsers' own ~0.6 GiB included; a document that needs more is FAILED and the "
        "process replaced.",
    )
    zip_max_entries: int = Field(
        default=10_000,
        gt=0,
        description="Most entries in a ZIP-based upload (DOCX, EPUB, CBZ, XPS), from its "
        "central directory.",
    )
    zip_max_uncompressed_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Most bytes a ZIP-based upload declares uncompressed, all members together.",
    )
    zip_max_ratio: float = Field(
        default=100.0,
        gt=1,
        description="Most uncompressed bytes per compressed byte of a ZIP member of 1 MiB or "
        "more (zip bombs).",
    )
    ocr: Literal["auto", "off", "force"] = Field(
        default="auto",
        description="OCR with Tesseract of PDF, XPS and CBZ pages: `auto` reads the pages that "
        "have no extractable text but show something (a scan, outlined text); `off` never "
        "(such a document fails with `no text layer`); `force` reads every page by OCR, "
        "ignoring its text layer. OCR runs in the extraction processes, under PARSE_TIMEOUT "
        "and PARSE_MAX_MEMORY.",
    )
    ocr_languages: str = Field(
        default="eng",
        pattern=r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$",
        description="Tesseract languages, `+`-separated (`eng+deu`); each needs its language "
        "data (Debian: `tesseract-ocr-LANG`).",
    )
    ocr_dpi: int = Field(
        default=300, ge=72, le=1200, description="Resolution pages are rendered at for OCR."
    )
    ocr_max_pixels: int = Field(
        default=25_000_000,
        gt=0,
        description="Most pixels of a page rendered for OCR: a larger page (a poster, a huge "
        "image) is rendered at the highest resolution up to OCR_DPI that fits, not refused.",
    )
    ocr_page_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds OCR of one page may take; past it the document is FAILED and "
        "the extraction process replaced (not enforced with PARSE_PROCESSES=0).",
    )
    tessdata_prefix: str | None = Field(
        default=None,
        description="Folder of Tesseract's language data (`eng.traineddata`, ...); unset: "
        "found from the installed `tesseract` (Debian: /usr/share/tesseract-ocr/5/tessdata).",
    )
    ingest_page_batch: int = Field(
        default=32, gt=0, description="Pages extracted, embedded and written per step."
    )
    ingest_max_attempts: int = Field(
        default=5, ge=1, description="Runs of a job whose Ollama calls fail before FAILED."
    )
    ingest_retry_base_wait: int = Field(
        default=2, ge=1, description="Retry n waits base**n seconds (2, 4, 8, ...)."
    )
    worker_heartbeat_interval: float = Field(
        default=5.0, gt=0, description="Seconds between a worker's heartbeats."
    )
    worker_stalled_timeout: float = Field(
        default=30.0, gt=0, description="Seconds without a heartbeat before a worker's jobs rerun."
    )
    worker_recovery_interval: int = Field(
        default=10,
        ge=1,
        le=59,
        description="Seconds between checks for stalled jobs and orphaned documents.",
    )
    ingest_orphan_grace: float = Field(
        default=300.0,
        ge=0,
        description="Seconds a document unfinished (QUEUED, PARSING, EMBEDDING) with no "
        "ingestion job waiting or running is left alone before it is queued again.",
    )
    ingest_max_recoveries: int = Field(
        default=3,
        ge=0,
        description="Times in a row a document whose ingestion stopped without an outcome (a "
        "stalled worker, a failed last write) is queued again; one more and it is FAILED.",
    )
    search_max_k: int = Field(
        default=50, gt=0, description="Largest `k` (hits) of `search`, `answer` and `ask`."
    )
    # Vector search per workspace (bench/search.py, 100k MiniLM-shaped chunks, 2 cores): an
    # exact scan (recall 1.0) while the scope holds at most `exact_search_max_rows` chunks,
    # the HNSW index with iterative scans above; ef_search 400 for recall@10 >= 0.95.
    hnsw_ef_search: int = Field(default=400, gt=0, description="HNSW candidate list size.")
    exact_search_max_rows: int = Field(
        default=3000, ge=0, description="Chunks in scope up to which vector search is exact."
    )
    # In a big table a scope holding a small share of it (one mid-size workspace) is also
    # searched exactly: the HNSW index would mostly walk other workspaces' rows (at 1M rows,
    # a 1 % workspace: recall@10 0.68 by HNSW against 1.0 exact, for 8 against 11 ms).
    exact_search_max_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Share of all chunks up to which a scope is searched exactly too.",
    )
    exact_search_share_max_rows: int = Field(
        default=20000,
        ge=0,
        description="Chunks in scope above which EXACT_SEARCH_MAX_SHARE no longer applies.",
    )
    vector_index_build_memory: str = Field(
        default="256MB",
        pattern=r"^[1-9][0-9]*(kB|MB|GB)$",
        description="`maintenance_work_mem` of the jobs building a workspace's HNSW index "
        "(a PostgreSQL size: kB, MB or GB): the graph is built in it, and much slower past it "
        "(about 4 x EMBED_DIM + 200 bytes a chunk).",
    )
    # Robertson & Zaragoza (2009), section 3.4: k1 in [1.2, 2], b 0.75, the usual defaults.
    bm25_k1: float = Field(
        default=1.2,
        ge=0,
        description="Okapi BM25 k1 of keyword search: how fast a word's repeats in a chunk "
        "stop adding to its score (0: only presence counts).",
    )
    bm25_b: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="Okapi BM25 b of keyword search: how much a chunk's length, against the "
        "workspace's average, discounts its score (0: not at all, 1: fully).",
    )
    query_embedding_cache_size: int = Field(
        default=1024,
        ge=0,
        description="Query embeddings kept per process, per workspace (no tenant can time "
        "another's searches), so a repeated search skips Ollama (0: none).",
    )
    query_embedding_cache_ttl: float = Field(
        default=600.0, gt=0, description="Seconds a kept query embedding is reused."
    )
    num_ctx: int = Field(default=8192, ge=512, description="Chat model context, tokens.")
    answer_max_tokens: int = Field(default=1024, gt=0, description="Tokens kept for the answer.")
    history_token_budget: int = Field(
        default=1024, ge=0, description="Tokens of conversation history kept in the prompt."
    )
    # Reciprocal rank fusion (Cormack et al. 2009). Tuned with `bench/fusion.py` on the LaTeX
    # set (tests/data/eval_questions.jsonl, all-MiniLM-L6-v2, BM25 keyword leg), checked on
    # the SQLite set: a plateau where the keyword list weighs 1.5 to 3 times the vector list;
    # bench/README.md has the figures.
    rrf_k: float = Field(
        default=20.0, gt=0, description="k of reciprocal rank fusion: score = w / (k + rank)."
    )
    hybrid_vector_weight: float = Field(
        default=1.0,
        ge=0,
        description="Weight w of the vector list in HYBRID search (tuned with `rag-gql eval`).",
    )
    hybrid_keyword_weight: float = Field(
        default=2.0,
        ge=0,
        description="Weight w of the keyword list in HYBRID search (tuned with `rag-gql eval`).",
    )
    hybrid_candidates: int = Field(default=50, gt=0, description="Depth of each ranked list.")
    rerank_url: str | None = Field(
        default=None,
        description="Base URL of a reranking server (a cross-encoder behind the rerank API of "
        "llama.cpp's server, vLLM, Infinity, Jina or Cohere: `POST /v1/rerank`; TEI: "
        "RERANK_API=tei). Unset: no reranking stage.",
    )
    rerank_model: str | None = Field(
        default=None,
        description="The model named in `v1` rerank requests (e.g. bge-reranker-v2-m3); "
        "unset: none is named (the server's own).",
    )
    rerank_api: Literal["v1", "tei"] = Field(
        default="v1",
        description="The reranker's wire format: `v1` (`POST /v1/rerank` with `documents`, "
        "answering `results` of `index` and `relevance_score`) or `tei` (Hugging Face Text "
        "Embeddings Inference: `POST /rerank` with `texts`, answering `index` and `score`).",
    )
    rerank_candidates: int = Field(
        default=50,
        gt=0,
        le=1000,
        description="How many of the best fused hits the reranker re-scores; the k returned "
        "are the best of them by its scores.",
    )
    rerank_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds one rerank request may take in all; past it (or on a 5xx, or "
        "while the circuit is open) hits come back in fused order with `reranked: false`.",
    )
    rerank_attempts: int = Field(
        default=2,
        ge=1,
        description="Tries of a rerank request that could not reach the reranker or got a "
        "5xx (exponential backoff with jitter).",
    )
    rerank_breaker_threshold: int = Field(
        default=5,
        ge=1,
        description="Failed rerank calls in a row (unreachable, timed out, 5xx) that open its "
        "circuit.",
    )
    rerank_breaker_reset: float = Field(
        default=30.0,
        gt=0,
        description="Seconds the reranker's open circuit skips reranking before one call is "
        "let through.",
    )

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # joserfc signs with any key, even an empty one: a short secret makes forgeable tokens.
        if value is not None and len(value.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
            raise PydanticCustomError(
                "jwt_secret_too_short",
                "JWT_SECRET has {length} bytes; it needs at least {minimum} (RFC 7518 3.2: an "
                "HS256 key has at least 256 bits). Set a random one, e.g. the output of "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`, or unset "
                "JWT_SECRET to have one generated into DATA_DIR",
                {"length": len(value.get_secret_value().encode()), "minimum": MIN_JWT_SECRET_BYTES},
            )
        return value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE")
        return self

    def resolved_jwt_secret(self) -> bytes:
        """Returns JWT_SECRET (validated: at least 32 bytes), or the random secret generated
        once into DATA_DIR/jwt_secret (atomically, mode 0600; a file shorter than 32 bytes,
        left by a crash, is generated again; see `rag_gql.keyfile`).

        Raises:
            OSError: when DATA_DIR cannot be created, locked or written.
        """
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value().encode()
        return read_or_create_secret(self.data_dir / "jwt_secret", min_bytes=MIN_JWT_SECRET_BYTES)
