"""Documents' user metadata: its shape checked (`check_metadata`) and the filters on it
checked (`check_conditions`), each once, before any SQL (`repositories.metadata_sql`).

Metadata is a flat JSON object: keys are 1 to `MAX_KEY_LENGTH` printable characters; values
are strings, finite numbers, booleans, or lists of those (no nesting, no null, no NUL
character: PostgreSQL's jsonb cannot hold one); the whole, as compact UTF-8 JSON, is at
most `MAX_METADATA_BYTES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rag_gql.errors import InvalidInput
from rag_gql.repositories.metadata_sql import MetadataCondition, MetadataOp, Scalar, Value

MAX_KEY_LENGTH = 128
"""Characters of a metadata key."""
MAX_CONDITIONS = 20
"""Conditions of one metadata filter."""
MAX_IN_VALUES = 100
"""Values of one `in` condition."""

Metadata = dict[str, Value]
"""A checked metadata object."""


@dataclass(frozen=True, slots=True)
class ConditionInput:
    """A metadata condition as a client sends it: `key` and, set, exactly one operator
    (None: not set)."""

    key: str
    eq: Any = None
    in_: Sequence[Any] | None = None
    gte: Any = None
    lte: Any = None
    exists: bool | None = None


def check_metadata(value: object, *, max_bytes: int, what: str = "metadata") -> Metadata:
    """`value` as metadata (a copy), or raises.

    Raises:
        InvalidInput: not an object, a bad key, a nested or null value, a NUL character, a
            number that is not finite, or over `max_bytes` (the message says which and where).
    """
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a JSON object of keys to values")
    checked: Metadata = {}
    for key, item in value.items():
        _check_key(key, what)
        if isinstance(item, list):
            checked[key] = [_scalar(v, f"{what}.{key}[{i}]") for i, v in enumerate(item)]
        else:
            checked[key] = _scalar(item, f"{what}.{key}")
    size = len(json.dumps(checked, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_bytes:
        raise InvalidInput(
            f"{what} is {size} bytes as JSON; the limit is {max_bytes} (MAX_METADATA_BYTES)"
        )
    return checked


def check_conditions(conditions: Sequence[ConditionInput]) -> list[MetadataCondition]:
    """The conditions of a metadata filter, checked.

    Raises:
        InvalidInput: more than `MAX_CONDITIONS`; a bad key; not exactly one operator in a
            condition; `eq` not a scalar or a list of scalars, `in` not 1 to
            `MAX_IN_VALUES` scalars, `gte`/`lte` not a number or a string.
    """
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidInput(f"A metadata filter has at most {MAX_CONDITIONS} conditions")
    return [_condition(c, f"metadata[{i}]") for i, c in enumerate(conditions)]


def _condition(c: ConditionInput, where: str) -> MetadataCondition:
    _check_key(c.key, f"{where}.key")
    operators = {"eq": c.eq, "in": c.in_, "gte": c.gte, "lte": c.lte, "exists": c.exists}
    given = [name for name, value in operators.items() if value is not None]
    if len(given) != 1:
        raise InvalidInput(
            f"{where} (key {c.key!r}) must set exactly one of eq, in, gte, lte, exists; "
            f"it sets {', '.join(given) or 'none'}"
        )
    (name,) = given
    op, value = MetadataOp(name), operators[name]
    at = f"{where}.{name}"
    if op is MetadataOp.EXISTS:
        return MetadataCondition(c.key, op, (bool(value),))
    if op is MetadataOp.EQ:
        if isinstance(value, list):
            return MetadataCondition(
                c.key, op, ([_scalar(v, f"{at}[{i}]") for i, v in enumerate(value)],)
            )
        return MetadataCondition(c.key, op, (_scalar(value, at),))
    if op is MetadataOp.IN:
        values = list(value)
        if not 1 <= len(values) <= MAX_IN_VALUES:
            raise InvalidInput(f"{at} must hold 1 to {MAX_IN_VALUES} values")
        return MetadataCondition(
            c.key, op, tuple(_scalar(v, f"{at}[{i}]") for i, v in enumerate(values))
        )
    bound = _scalar(value, at)
    if isinstance(bound, bool):
        raise InvalidInput(f"{at} must be a number or a string, not a boolean")
    return MetadataCondition(c.key, op, (bound,))


def _check_key(key: object, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{where}: a key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"{where}: the key {key[:40]!r}... is longer than {MAX_KEY_LENGTH}")
    if not key.isprintable():
        raise InvalidInput(f"{where}: the key {key!r} holds a control character")


def _scalar(value: object, where: str) -> Scalar:
    if isinstance(value, bool | int | str):
        if isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{where} holds a NUL character")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where} is not a finite number")
        return value
    if value is None:
        raise InvalidInput(f"{where} is null; leave the key out instead")
    if isinstance(value, Mapping | list):
        raise InvalidInput(
            f"{where} is nested; values are strings, numbers, booleans or lists of them"
        )
    raise InvalidInput(f"{where} is not a string, number or boolean")
