"""Rate limits on the account endpoints, per client IP and per account.

A moving window (`limits`' `MovingWindowRateLimiter`) counts each attempt for a minute (or
whatever the setting says), so a burst at a window's edge cannot double the allowance. The
counters live in `RATE_LIMIT_STORAGE_URI`: `memory://` is one process's memory; several
processes share them in Redis (`redis://host:6379`) or another `limits` storage.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

from rag_gql.config import Settings
from rag_gql.errors import RateLimited


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
        # The async variant of every storage is named `async+<scheme>`.
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        try:
            storage = storage_from_string(uri)
        except ConfigurationError as exc:
            raise ValueError(f"RATE_LIMIT_STORAGE_URI: {exc}") from exc
        self._limiter = MovingWindowRateLimiter(storage)
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
