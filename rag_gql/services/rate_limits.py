"""Rate limits and quotas: how often (the account endpoints per client IP and per account;
the expensive operations per user and per workspace), how many at once (per user), and how
much a workspace may store.

`RateLimiter` counts attempts at the account endpoints (register, log in, codes, password
resets) per `(action, client IP)` and per `(action, account)`. `Quotas` counts `search`,
`answer` (with `ask`), `file` (`GET /documents/{id}/file`), `upload`, `reindex`,
`createWorkspace`, `createApiKey` and `inviteMember` requests per user and per workspace.
Both use moving windows (`limits`' `MovingWindowRateLimiter`: each attempt counts for the
window, so a burst at a window's edge cannot double the allowance), kept in
`RATE_LIMIT_STORAGE_URI`: `memory://` is one process's memory; several processes share them
in Redis (`redis://host:6379`) or another `limits` storage. `Slots` counts what is running
now, in this process only: a user's answers being streamed, a user's live WebSocket
operations, the WebSockets of a user and of an IP. `StorageQuota` bounds a workspace's
stored bytes and documents, counted in the database.
(GraphQL's own limits, depth and cost, are `graphql/limits.py`'s.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from sqlalchemy.ext.asyncio import AsyncSession

from rag_gql.config import Settings
from rag_gql.db.models import Document
from rag_gql.errors import QuotaExceeded, RateLimited
from rag_gql.repositories import documents
from rag_gql.services.access import Principal


class Operation(StrEnum):
    """The rate-limited operations; `answer` covers the `answer` subscription and `ask`."""

    SEARCH = "search"
    FILE = "file"
    ANSWER = "answer"
    UPLOAD = "upload"
    REINDEX = "reindex"
    CREATE_WORKSPACE = "createWorkspace"
    CREATE_API_KEY = "createApiKey"
    INVITE = "inviteMember"


def caller_key(principal: Principal) -> str:
    """Whom a limit per user counts: the user, also when an API key they created acts (so
    that minting keys does not multiply their allowance), or a key whose creator is gone."""
    user_id = principal.user_id or principal.key_creator_id
    if user_id is not None:
        return f"user:{user_id}"
    return f"key:{principal.api_key_id}"


def _moving_window(storage_uri: str) -> MovingWindowRateLimiter:
    """A moving-window limiter on the `limits` storage `storage_uri` (its async variant).

    Raises:
        ConfigurationError: the URI is malformed or names an unknown storage.
    """
    # The async variant of every storage is named `async+<scheme>`.
    uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
    return MovingWindowRateLimiter(storage_from_string(uri))


class RateLimiter:
    """Counts attempts per `(action, client IP)` and per `(action, account)`.

    Example:
        `await limiter.hit("login", client_ip="203.0.113.7", account="ada@example.com")`
    """

    def __init__(self, *, storage_uri: str, per_ip: str, per_account: str) -> None:
        """Builds the limiter; the limits are strings like `30/minute` or `100 per hour`.

        Raises:
            ValueError: a limit or the storage URI is malformed, or the storage is unknown.
        """
        try:
            self._limiter = _moving_window(storage_uri)
        except ConfigurationError as exc:
            raise ValueError(f"RATE_LIMIT_STORAGE_URI: {exc}") from exc
        self._per_ip: RateLimitItem = parse(per_ip)
        self._per_account: RateLimitItem = parse(per_account)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limiter `RATE_LIMIT_STORAGE_URI` and `RATE_LIMIT_AUTH_PER_*` describe."""
        return cls(
            storage_uri=settings.rate_limit_storage_uri,
            per_ip=settings.rate_limit_auth_per_ip,
            per_account=settings.rate_limit_auth_per_account,
        )

    async def hit(self, action: str, *, client_ip: str | None, account: str | None) -> None:
        """Counts one attempt at `action`; an unknown IP or account is not counted.

        Raises:
            RateLimited: the IP or the account has used up its attempts; `retry_after` says
                when the oldest attempt leaves the window.
        """
        checks = [(self._per_ip, "ip", client_ip), (self._per_account, "account", account)]
        for item, kind, key in checks:
            if key is not None and not await self._limiter.hit(item, action, kind, key):
                stats = await self._limiter.get_window_stats(item, action, kind, key)
                retry_after = math.ceil(stats.reset_time - time.time())
                raise RateLimited(
                    f"Too many attempts; try again in {max(1, retry_after)} seconds",
                    retry_after=retry_after,
                )


class Quotas:
    """Per-user and per-workspace rate limits of `Operation`s.

    Example:
        `await quotas.hit(Operation.SEARCH, principal)` before running a search.
    """

    def __init__(
        self, *, storage_uri: str, rates: Mapping[Operation, tuple[str, str | None]]
    ) -> None:
        """`rates` gives each operation's (per user, per workspace) limit, e.g. `60/minute`;
        None: no limit per workspace.

        Raises:
            ValueError: a limit or the storage URI is malformed, or the storage is unknown.
        """
        try:
            self._limiter = _moving_window(storage_uri)
            self._rates: dict[Operation, tuple[RateLimitItem, RateLimitItem | None]] = {
                op: (parse(user), None if workspace is None else parse(workspace))
                for op, (user, workspace) in rates.items()
            }
        except (ConfigurationError, ValueError) as exc:
            raise ValueError(f"rate limits: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        """The limits `RATE_LIMIT_{SEARCH,FILE,ANSWER,UPLOAD,REINDEX,INVITE}_PER_{USER,WORKSPACE}`
        and `RATE_LIMIT_{CREATE_WORKSPACE,CREATE_API_KEY}_PER_USER` describe."""
        s = settings
        return cls(
            storage_uri=s.rate_limit_storage_uri,
            rates={
                Operation.SEARCH: (s.rate_limit_search_per_user, s.rate_limit_search_per_workspace),
                Operation.FILE: (s.rate_limit_file_per_user, s.rate_limit_file_per_workspace),
                Operation.ANSWER: (s.rate_limit_answer_per_user, s.rate_limit_answer_per_workspace),
                Operation.UPLOAD: (s.rate_limit_upload_per_user, s.rate_limit_upload_per_workspace),
                Operation.REINDEX: (
                    s.rate_limit_reindex_per_user,
                    s.rate_limit_reindex_per_workspace,
                ),
                Operation.CREATE_WORKSPACE: (s.rate_limit_create_workspace_per_user, None),
                Operation.CREATE_API_KEY: (s.rate_limit_create_api_key_per_user, None),
                Operation.INVITE: (s.rate_limit_invite_per_user, s.rate_limit_invite_per_workspace),
            },
        )

    async def hit(self, operation: Operation, principal: Principal) -> None:
        """Counts one `operation` for the caller and for its workspace.

        Raises:
            RateLimited: the caller or the workspace used up its allowance; the message and
                `retry_after` say in how many seconds the oldest request leaves the window.
        """
        per_user, per_workspace = self._rates[operation]
        checks = [
            (per_user, "user", caller_key(principal)),
            (per_workspace, "workspace", str(principal.workspace_id)),
        ]
        for item, scope, key in checks:
            if item is None:
                continue
            if not await self._limiter.hit(item, operation.value, scope, key):
                stats = await self._limiter.get_window_stats(item, operation.value, scope, key)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                who = "you" if scope == "user" else "this workspace"
                raise RateLimited(
                    f"Too many {operation.value} requests from {who} (at most {item}); "
                    f"try again in {retry_after} seconds",
                    retry_after=retry_after,
                )


class Slots:
    """At most `limit` things held at once per key, in this process.

    Example:
        `with slots.hold(caller_key(principal)): ...` raises `RateLimited` for the
        `limit + 1`-th holder of the same key while the others still hold theirs.
    """

    def __init__(self, limit: int, *, what: str, setting: str) -> None:
        """`what` names the things held in the error (e.g. "answers streaming"), `setting`
        the setting that sets `limit`."""
        self.limit = limit
        self.what = what
        self.setting = setting
        self._held: Counter[Hashable] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def total(self) -> int:
        """Things held now, all keys together."""
        return sum(self._held.values())

    def acquire(self, key: Hashable) -> None:
        """Holds one more for `key`.

        Raises:
            RateLimited: `key` already holds `limit` (retry after a second: one may end soon).
        """
        if self._held[key] >= self.limit:
            raise RateLimited(
                f"Too many {self.what} at once (at most {self.limit}, {self.setting}); "
                "try again in 1 second, or when one has ended",
                retry_after=1,
            )
        self._held[key] += 1
        self._idle.clear()

    def release(self, key: Hashable) -> None:
        """Gives back one that `key` held."""
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
        if not self._held:
            self._idle.set()

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        """Holds one for `key` for the duration of the block (raises as `acquire`)."""
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    async def wait_idle(self) -> None:
        """Returns once nothing is held (for a graceful shutdown: under a timeout)."""
        await self._idle.wait()


class StorageQuota:
    """At most `max_documents` documents and `max_bytes` bytes of original files (the stored
    uploads) per workspace; deleting documents frees their share.

    Example:
        `await quota.check(session, document)` in the transaction that inserts `document`,
        as its last statement: the check and the commit happen under the workspace's lock,
        so concurrent uploads cannot pass the quota together.
    """

    def __init__(self, *, max_bytes: int, max_documents: int) -> None:
        self.max_bytes = max_bytes
        self.max_documents = max_documents

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageQuota:
        """The quota `WORKSPACE_MAX_BYTES` and `WORKSPACE_MAX_DOCUMENTS` describe."""
        return cls(
            max_bytes=settings.workspace_max_bytes,
            max_documents=settings.workspace_max_documents,
        )

    async def check(self, session: AsyncSession, document: Document) -> None:
        """Locks the workspace's usage until the transaction ends, then counts the other
        documents of `document`'s workspace (committed ones, and the caller's own).

        Raises:
            QuotaExceeded: with `document` the workspace would have more documents or more
                bytes than its quota; the message gives the figures (the transaction must
                then roll back, which the raise does in `Database.transaction`).
        """
        workspace_id = document.workspace_id
        await documents.lock_usage(session, workspace_id=workspace_id)
        count, used = await documents.usage(
            session, workspace_id=workspace_id, excluding=document.id
        )
        if count + 1 > self.max_documents:
            raise QuotaExceeded(
                f"This workspace holds {count} documents, its quota is {self.max_documents} "
                f"(WORKSPACE_MAX_DOCUMENTS): {document.filename!r} cannot be added; delete "
                "documents to make room",
                quota="WORKSPACE_MAX_DOCUMENTS",
                used=count,
                limit=self.max_documents,
                requested=1,
            )
        if used + document.size_bytes > self.max_bytes:
            raise QuotaExceeded(
                f"{document.filename!r} ({document.size_bytes} bytes) does not fit in this "
                f"workspace's storage quota: {used} of {self.max_bytes} bytes used "
                f"({used / 2**20:.1f} of {self.max_bytes / 2**20:.1f} MiB, "
                "WORKSPACE_MAX_BYTES); delete documents to make room",
                quota="WORKSPACE_MAX_BYTES",
                used=used,
                limit=self.max_bytes,
                requested=document.size_bytes,
            )
