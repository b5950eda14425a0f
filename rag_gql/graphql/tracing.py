"""The GraphQL operations' spans (needs the `otel` extra; imported only when tracing is on):
Strawberry's OpenTelemetry extension made cheap and secret-free. What else is traced, and how,
is `rag_gql.observability.otel`'s."""

from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial
from typing import Any

from graphql import GraphQLResolveInfo, OperationType
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from strawberry.extensions import LifecycleStep, SchemaExtension
from strawberry.extensions.tracing.opentelemetry import OpenTelemetryExtension

from rag_gql.graphql.extensions import describe_operation, error_code
from rag_gql.observability.otel import OUTCOME, REQUEST_ID, Tracing
from rag_gql.observability.requests import current_request_id


def tracing_extension(tracing: Tracing) -> Callable[[], SchemaExtension]:
    """A factory of `GraphQLTracing` (one per operation) on `tracing`'s provider, for
    `build_schema`'s `extensions`."""
    return partial(GraphQLTracing, tracer_provider=tracing.provider)


class GraphQLTracing(OpenTelemetryExtension):
    """Strawberry's OpenTelemetry extension, made cheap and secret-free for this API.

    Strawberry's own records the whole document (`query`) and every argument of every traced
    field (`graphql.param.*`: passwords, tokens, questions), makes a span for every field
    with a resolver of its own (one per item of a list: measured 10x slower on a list of a
    thousand), including each event of a subscription (each answer token), and leaves the
    operation span inactive, so work outside resolver spans has the request as parent.
    Here: the operation span is current while it runs (SQL and Ollama calls nest in it),
    records neither document nor arguments, and only the root fields of queries and
    mutations, where this API does its work, get spans. Parsing and validation spans are
    Strawberry's.
    """

    def on_operation(self) -> Generator[None, None, None]:
        ctx = self.execution_context
        span = self._tracer.start_span("GraphQL Operation")
        self._span_holder[LifecycleStep.OPERATION] = span
        request_id = current_request_id()  # a WebSocket operation's own (Observe binds it)
        if request_id is not None:
            span.set_attribute(REQUEST_ID, request_id)
        outcome = "stopped"  # left before its end: the client completed it, or went away
        try:
            with trace.use_span(span):
                yield
            errors = ctx.pre_execution_errors or (ctx.result.errors if ctx.result else None)
            outcome = error_code(errors[0]) if errors else "ok"
        except Exception:
            outcome = "INTERNAL_SERVER_ERROR"
            raise
        finally:
            kind, root_field = describe_operation(ctx)
            if kind != "unknown":
                span.update_name(f"{kind} {ctx.operation_name or root_field}")
                span.set_attribute("graphql.operation.type", kind)
            if ctx.operation_name:
                span.set_attribute("graphql.operation.name", ctx.operation_name)
            span.set_attribute(OUTCOME, outcome)
            if outcome == "INTERNAL_SERVER_ERROR":
                span.set_status(StatusCode.ERROR, outcome)
            span.end()

    def resolve(
        self,
        _next: Callable[..., Any],
        root: Any,
        info: GraphQLResolveInfo[Any],
        *args: str,
        **kwargs: Any,
    ) -> Any:
        """A span for a root field of a query or mutation; other fields resolve untouched
        (no span, no extra coroutine)."""
        if info.path.prev is None and info.operation.operation is not OperationType.SUBSCRIPTION:
            return super().resolve(_next, root, info, *args, **kwargs)
        return _next(root, info, *args, **kwargs)

    def filter_resolver_args(
        self, args: dict[str, Any], info: GraphQLResolveInfo[Any]
    ) -> dict[str, Any]:
        """No argument is recorded (nor copied, as Strawberry's `arg_filter` would)."""
        return {}
