"""Limits on the expensive operations: how often (per user and per workspace) and how many at
once (per user).

`Quotas` counts `search`, `answer` (with `ask`) and `upload` requests in moving windows
(`limits`, in `RATE_LIMIT_STORAGE_URI` as the account limits of `ratelimit.py`: shared by
every process when that is Redis). `Slots` counts what is running now, in this process only:
a user's answers being streamed, a user's live WebSocket operations.
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

from rag_gql.config import Settings
from rag_gql.errors import RateLimited
from rag_gql.services.access import Principal


class Operation(StrEnum):
    """The rate-limited operations; `answer` covers the `answer` subscription and `ask`."""

    SEARCH = "search"
    ANSWER = "answer"
    UPLOAD = "upload"


def caller_key(principal: Principal) -> str:
    """Whom a limit per user counts: the user, or the API key acting without one."""
    if principal.user_id is not None:
        return f"user:{principal.user_id}"
    return f"key:{principal.api_key_id}"


class Quotas:
    """Per-user and per-workspace rate limits of `Operation`s.

    Example:
        `await quotas.hit(Operation.SEARCH, principal)` before running a search.
    """

    def __init__(self, *, storage_uri: str, rates: Mapping[Operation, tuple[str, str]]) -> None:
        """`rates` gives each operation's (per user, per workspace) limit, e.g. `60/minute`.

        Raises:
            ValueError: a limit or the storage URI is malformed, or the storage is unknown.
        """
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        try:
            storage = storage_from_string(uri)
            self._rates: dict[Operation, tuple[RateLimitItem, RateLimitItem]] = {
                op: (parse(user), parse(workspace)) for op, (user, workspace) in rates.items()
            }
        except (ConfigurationError, ValueError) as exc:
            raise ValueError(f"rate limits: {exc}") from exc
        self._limiter = MovingWindowRateLimiter(storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        """The limits `RATE_LIMIT_{SEARCH,ANSWER,UPLOAD}_PER_{USER,WORKSPACE}` describe."""
        s = settings
        return cls(
            storage_uri=s.rate_limit_storage_uri,
            rates={
                Operation.SEARCH: (s.rate_limit_search_per_user, s.rate_limit_search_per_workspace),
                Operation.ANSWER: (s.rate_limit_answer_per_user, s.rate_limit_answer_per_workspace),
                Operation.UPLOAD: (s.rate_limit_upload_per_user, s.rate_limit_upload_per_workspace),
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
        self._what = what
        self._setting = setting
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
                f"Too many {self._what} at once (at most {self.limit}, {self._setting}); "
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
