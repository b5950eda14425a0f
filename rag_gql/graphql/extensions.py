"""Maps domain errors to `extensions.code` and masks everything else.

A `DomainError` keeps its message and gets its code (`BAD_USER_INPUT`, `NOT_FOUND`, ...),
plus whatever its `extensions()` adds (`RateLimited`: `retryAfter`).
Any other exception is a bug: it is logged with its traceback and an error id, and the
client sees only "Internal server error" with `INTERNAL_SERVER_ERROR` and that id.
Errors without an original exception (syntax, validation) pass through as GraphQL-core
wrote them, with `GRAPHQL_VALIDATION_FAILED`.
"""

from __future__ import annotations

import logging
import uuid

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from rag_gql.errors import DomainError

log = logging.getLogger(__name__)


class DomainErrors(MaskErrors):
    """Strawberry schema extension: domain errors → codes, the rest → masked and logged."""

    def __init__(self) -> None:
        super().__init__(error_message="Internal server error")

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [self._convert(error) for error in errors]

    def _convert(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        extensions = dict(error.extensions or {})
        if isinstance(original, DomainError):
            extensions.update(original.extensions())
            extensions["code"] = original.code
            return _copy(error, str(original), extensions)
        if original is None or isinstance(original, GraphQLError):
            extensions.setdefault("code", "GRAPHQL_VALIDATION_FAILED")
            return _copy(error, error.message, extensions)
        error_id = uuid.uuid4().hex
        log.error("internal error %s at %s", error_id, error.path, exc_info=original)
        return _copy(
            error, self.error_message, {"code": "INTERNAL_SERVER_ERROR", "errorId": error_id}
        )


def _copy(error: GraphQLError, message: str, extensions: dict[str, object]) -> GraphQLError:
    return GraphQLError(
        message=message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )
