"""Domain errors: what services raise and clients may see.

Each maps to a GraphQL `extensions.code` (see `rag_gql.graphql.extensions`)::

    DomainError
     ├── InvalidInput         BAD_USER_INPUT
     │    └── QuotaExceeded   QUOTA_EXCEEDED         (extensions: quota, used, limit, requested)
     ├── Unauthenticated      UNAUTHENTICATED
     ├── Forbidden            FORBIDDEN
     ├── NotFound             NOT_FOUND
     ├── Conflict             CONFLICT
     ├── RetryLater                                  (extensions.retryAfter: seconds)
     │    ├── RateLimited     RATE_LIMITED
     │    └── ServerBusy      SERVER_BUSY            (no database connection free in time, or
     │                                                a statement past DB_STATEMENT_TIMEOUT or
     │                                                DB_LOCK_TIMEOUT)
     ├── UpstreamUnavailable  UPSTREAM_UNAVAILABLE   (Ollama/SMTP unreachable)
     └── UpstreamError        UPSTREAM_ERROR         (Ollama answered with an error)

Anything else reaching the GraphQL layer is a bug: it is logged and masked.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class: an error the client caused or can act on. `str(e)` is shown to clients."""

    code = "INTERNAL_SERVER_ERROR"

    def extensions(self) -> dict[str, object]:
        """Extra `extensions` entries for the client besides `code` (none by default)."""
        return {}


class InvalidInput(DomainError):
    """The request's input is wrong (bad file, bad argument, wrong code)."""

    code = "BAD_USER_INPUT"


class QuotaExceeded(InvalidInput):
    """Storing this would pass one of the workspace's quotas (`quota` names its setting);
    `used`, `limit` and `requested` are in that quota's unit (bytes or documents)."""

    code = "QUOTA_EXCEEDED"

    def __init__(self, message: str, *, quota: str, used: int, limit: int, requested: int) -> None:
        super().__init__(message)
        self.quota = quota
        self.used = used
        self.limit = limit
        self.requested = requested

    def extensions(self) -> dict[str, object]:
        """`quota` (the setting), `used`, `limit` and `requested`."""
        return {
            "quota": self.quota,
            "used": self.used,
            "limit": self.limit,
            "requested": self.requested,
        }


class Unauthenticated(DomainError):
    """No credentials, or credentials that are wrong, expired or unverified."""

    code = "UNAUTHENTICATED"


class Forbidden(DomainError):
    """Authenticated, but not allowed to do this."""

    code = "FORBIDDEN"


class NotFound(DomainError):
    """Does not exist, or is not the caller's: the two are never told apart."""

    code = "NOT_FOUND"


class Conflict(DomainError):
    """The request clashes with existing state (e.g. an email already registered)."""

    code = "CONFLICT"


class UpstreamUnavailable(DomainError):
    """A service we depend on (Ollama, SMTP) cannot be reached or timed out."""

    code = "UPSTREAM_UNAVAILABLE"


class UpstreamError(DomainError):
    """A service we depend on answered with an error; the message says which."""

    code = "UPSTREAM_ERROR"


class RetryLater(DomainError):
    """Base of the refusals a client may retry: `retry_after` is the whole seconds (at least
    1) to wait, given as `extensions.retryAfter`."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)

    def extensions(self) -> dict[str, object]:
        """`retryAfter`, in seconds, as HTTP's `Retry-After` (RFC 9110 10.2.3)."""
        return {"retryAfter": self.retry_after}


class ServerBusy(RetryLater):
    """The process is at capacity (no database connection came free in `DB_POOL_TIMEOUT`
    seconds, or a statement ran past `DB_STATEMENT_TIMEOUT` or waited for a lock past
    `DB_LOCK_TIMEOUT`); nothing was done."""

    code = "SERVER_BUSY"


class RateLimited(RetryLater):
    """Too many requests from the caller (or its workspace)."""

    code = "RATE_LIMITED"
