"""Maps domain errors to `extensions.code` and masks everything else.

A `DomainError` keeps its message and gets its code (`BAD_USER_INPUT`, `NOT_FOUND`, ...),
plus whatever its `extensions()` adds (`RateLimited`: `retryAfter`).
Any other exception is a bug: it is logged with its traceback and an error id, and the
client sees only "Internal server error" with `INTERNAL_SERVER_ERROR`, that `errorId` and the
`requestId` of the request (also in the `X-Request-Id` header and every log line of it).
Errors without an original exception (syntax, validation) pass through as GraphQL-core
wrote them, with `GRAPHQL_VALIDATION_FAILED` unless they carry a code of their own (the
limits of `rag_gql.graphql.limits`). A query or mutation sent as a subscription stream over
HTTP (`rag_gql.graphql.http_subscriptions`) gets `BAD_REQUEST`.

`Observe` gives each WebSocket operation its own request id and counts every operation in
the process's metrics.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from starlette.websockets import WebSocket
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types.execution import ExecutionContext

from rag_gql.errors import DomainError
from rag_gql.observability.requests import bind_operation_id, current_request_id

log = logging.getLogger(__name__)

NOT_A_STREAM = (
    "send queries and mutations with `Accept: application/json`, not "
    "`multipart/mixed;subscriptionSpec=1.0`"
)


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
        if isinstance(original, InvalidOperationTypeError):
            # Only the multipart subscription transport runs a document whose operation type
            # it refuses, and streams the refusal.
            message = f"{error.message} in a subscription stream; {NOT_A_STREAM}"
            return _copy(error, message, {"code": "BAD_REQUEST"})
        error_id = uuid.uuid4().hex
        log.error("internal error %s at %s", error_id, error.path, exc_info=original)
        extensions = {"code": "INTERNAL_SERVER_ERROR", "errorId": error_id}
        request_id = current_request_id()
        if request_id is not None:
            extensions["requestId"] = request_id
        return _copy(error, self.error_message, extensions)


def as_graphql_error(error: DomainError) -> GraphQLError:
    """The error a client gets for `error` raised outside a resolver: its message, its code
    and its `extensions()`, as `DomainErrors` gives one raised inside."""
    return GraphQLError(str(error), extensions={"code": error.code, **error.extensions()})


def error_code(error: GraphQLError) -> str:
    """The `extensions.code` the client gets for `error`, before or after `DomainErrors`."""
    code = (error.extensions or {}).get("code")
    if isinstance(code, str):
        return code
    original = error.original_error
    if isinstance(original, DomainError):
        return original.code
    if original is None or isinstance(original, GraphQLError):
        return "GRAPHQL_VALIDATION_FAILED"
    if isinstance(original, InvalidOperationTypeError):
        return "BAD_REQUEST"
    return "INTERNAL_SERVER_ERROR"


class Observe(SchemaExtension):
    """Schema extension: a request id per WebSocket operation; each operation counted in
    `Metrics` by type, root field and outcome (`ok` or the first error's code), and timed."""

    def __init__(self) -> None:
        self._outcome: str | None = None

    def on_operation(self) -> Iterator[None]:
        ctx = self.execution_context
        context = ctx.context
        started = time.perf_counter()
        if isinstance(getattr(context, "request", None), WebSocket):
            with bind_operation_id():
                yield
        else:
            yield
        services = getattr(context, "services", None)
        if services is None:  # executed outside the app (tools, unit tests)
            return
        kind, operation = describe_operation(ctx)
        outcome = self._outcome or _outcome(ctx)
        services.metrics.observe_operation(
            type=kind, operation=operation, outcome=outcome, seconds=time.perf_counter() - started
        )

    def on_stream_result(self, result: object) -> Iterator[None]:
        """Remembers the first error a subscription streamed."""
        errors = getattr(result, "errors", None)
        if errors and self._outcome is None:
            self._outcome = error_code(errors[0])
        yield


def _outcome(ctx: ExecutionContext) -> str:
    errors = ctx.pre_execution_errors or (ctx.result.errors if ctx.result else None)
    return error_code(errors[0]) if errors else "ok"


def describe_operation(ctx: ExecutionContext) -> tuple[str, str]:
    """(query | mutation | subscription | unknown, root field | multiple | introspection |
    other | unknown) of the operation run. Only the schema's own root field names are used,
    so the values stay a small set whatever clients send (metrics labels)."""
    document = ctx.graphql_document
    if document is None:
        return "unknown", "unknown"
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    name = ctx.operation_name
    chosen = next(
        (op for op in operations if name is None or (op.name and op.name.value == name)), None
    )
    if chosen is None:
        return "unknown", "unknown"
    root = ctx.schema._schema.get_root_type(chosen.operation)
    if root is None:
        return "unknown", "unknown"
    fields = {
        s.name.value
        for s in chosen.selection_set.selections
        if isinstance(s, FieldNode) and s.name.value != "__typename"
    }
    if any(f not in root.fields and f not in ("__schema", "__type") for f in fields):
        return "unknown", "unknown"  # did not validate
    if fields and all(f.startswith("__") for f in fields):
        operation = "introspection"
    elif len(fields) == 1:
        operation = next(iter(fields))
    else:
        operation = "multiple" if len(fields) > 1 else "other"
    return chosen.operation.value, operation


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
