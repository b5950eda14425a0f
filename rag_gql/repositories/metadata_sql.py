"""SQL conditions on a document's user metadata (`document.metadata`, jsonb), shared by the
search's scope (`search_sql.ChunkScope`, asyncpg text) and the documents listing
(`documents.list_page`, SQLAlchemy text).

One renderer, two placeholder styles: each condition asks `add(value, sql_type)` for a typed
placeholder (`$3::jsonb[]` for asyncpg, `CAST(:m3 AS jsonb[])` for SQLAlchemy) and formats only
that and constants into the SQL. JSON values go as JSON text. Equality and membership are
`@>` containment and `exists` is `?`, which the GIN index `ix_document_metadata` serves; the
ranges read the key's value.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import TextClause, text

Scalar = str | int | float | bool
"""A metadata value's element: a JSON string, number or boolean."""
Value = Scalar | list[Scalar]
"""A metadata value: a scalar or a list of scalars."""
AddParameter = Callable[[Any, str], str]
"""`add(value, sql_type)`: a new argument's placeholder, cast to `sql_type`."""


class MetadataOp(enum.Enum):
    """What a `MetadataCondition` asks of its key's value."""

    EQ = "eq"
    IN = "in"
    GTE = "gte"
    LTE = "lte"
    EXISTS = "exists"


@dataclass(frozen=True, slots=True)
class MetadataCondition:
    """One checked condition on the metadata's `key` (`services.metadata.check_conditions`).

    - EQ `values=(v,)`: a scalar equals `v`, or a list holds it; a list `v` equals the value.
    - IN `values=(v1, ...)` (scalars): EQ of any of them.
    - GTE / LTE `values=(v,)` (a number, or a string compared by code point, as ISO dates
      sort): the value, or one element of a list, of the same JSON type is ≥ / ≤ `v`.
    - EXISTS `values=(True,)` the key is set; `(False,)` it is not.
    """

    key: str
    op: MetadataOp
    values: tuple[Value, ...]

    def sql(self, add: AddParameter, column: str) -> str:
        """This condition on the jsonb expression `column`, as SQL text."""
        key = self.key
        if self.op is MetadataOp.EXISTS:
            present = f"{column} ? {add(key, 'text')}"
            return present if self.values[0] else f"NOT ({present})"
        if self.op in (MetadataOp.EQ, MetadataOp.IN):
            (first,) = self.values[:1]
            if isinstance(first, list):
                contains = add(json.dumps({key: first}), "jsonb")
                return (
                    f"({column} @> {contains}"
                    f" AND {column} -> {add(key, 'text')} = {add(json.dumps(first), 'jsonb')})"
                )
            shapes = [json.dumps({key: shape}) for v in self.values for shape in (v, [v])]
            return f"{column} @> ANY({add(shapes, 'jsonb[]')})"
        (bound,) = self.values
        comparison = ">=" if self.op is MetadataOp.GTE else "<="
        value = f"{column} -> {add(key, 'text')}"
        if isinstance(bound, str):
            kind, element = "string", "(e.v #>> '{}') COLLATE \"C\""
            placeholder = add(bound, "text")
        else:
            kind, element = "number", "(e.v #>> '{}')::numeric"
            placeholder = add(Decimal(str(bound)), "numeric")
        return (
            "EXISTS (SELECT 1 FROM jsonb_array_elements("  # noqa: S608
            f"CASE WHEN jsonb_typeof({value}) = 'array' THEN {value}"
            f" ELSE jsonb_build_array({value}) END) AS e(v)"
            f" WHERE jsonb_typeof(e.v) = '{kind}' AND {element} {comparison} {placeholder})"
        )


def conditions_sql(conditions: Sequence[MetadataCondition], add: AddParameter, column: str) -> str:
    """Every condition on `column`, ANDed ("TRUE" for none)."""
    return " AND ".join(c.sql(add, column) for c in conditions) or "TRUE"


def conditions_clause(conditions: Sequence[MetadataCondition], column: str) -> TextClause:
    """`conditions_sql` as a SQLAlchemy clause with bound parameters (`:m0`, `:m1`, ...)."""
    params: dict[str, Any] = {}

    def add(value: Any, sql_type: str) -> str:
        name = f"m{len(params)}"
        params[name] = value
        return f"CAST(:{name} AS {sql_type})"

    sql = conditions_sql(conditions, add, column)
    return text(sql).bindparams(**params)
