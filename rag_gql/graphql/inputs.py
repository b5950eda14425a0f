"""Refuses text PostgreSQL cannot store: a NUL character (U+0000) anywhere in an operation's
string literals or variables is `BAD_USER_INPUT` before any resolver runs, instead of a
database error deep inside one (found by the fuzz run, tests/test_fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graphql import DocumentNode, GraphQLError, StringValueNode, Visitor, visit
from strawberry.extensions import SchemaExtension

from rag_gql.services.pgtext import NUL

MESSAGE = "Text must not contain NUL characters (U+0000)"


class RejectNulCharacters(SchemaExtension):
    """Strawberry schema extension: an operation holding a NUL is rejected whole, with one
    `BAD_USER_INPUT` error and no `data` (after the limits and the spec's validation, when
    those ran first and found nothing)."""

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if (
            not ctx.pre_execution_errors
            and document is not None
            and (_in_literals(document) or _in_value(ctx.variables))
        ):
            ctx.pre_execution_errors = [
                GraphQLError(MESSAGE, extensions={"code": "BAD_USER_INPUT"})
            ]
        yield


class _NulFinder(Visitor):
    found = False

    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        if NUL in node.value:
            self.found = True


def _in_literals(document: DocumentNode) -> bool:
    finder = _NulFinder()
    visit(document, finder)
    return finder.found


def _in_value(value: object) -> bool:
    """Whether a JSON-shaped value (variables) holds a string with a NUL, at any depth."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(_in_value(k) or _in_value(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_in_value(item) for item in value)
    return False
