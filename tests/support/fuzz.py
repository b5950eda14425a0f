"""A GraphQL fuzz run with schemathesis: random valid and invalid operations on every query and
mutation field, sent with a user's token; each response is checked for 5xx and unmasked errors.

Used by tests/test_fuzz.py (a short run in CI) and bench/fuzz.py (1,000+ cases). schemathesis
turns the schema (loaded by introspection) into hypothesis-graphql strategies; hypothesis draws
the cases. A case's request is blocking (`requests`): call `run` from a thread when the server
runs on the caller's event loop.

Example:
    >>> report = run("http://127.0.0.1:8000", token, cases=100)  # doctest: +SKIP
    >>> assert not report.failures, report.describe_failures()
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import graphql
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.graphql import nodes

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
"""What a leaked stack trace looks like in a message."""

# `Upload` arrives as a multipart part; inlined in a JSON query it can only be a literal, which
# the server must refuse as it would any other wrong value.
schemathesis.graphql.scalar(
    "Upload", st.one_of(st.just(nodes.Null), st.text(max_size=40).map(nodes.String))
)


def _json_object(fields: dict[str, graphql.ValueNode]) -> graphql.ValueNode:
    return nodes.Object(
        [
            graphql.ObjectFieldNode(name=graphql.NameNode(value=key), value=value)
            for key, value in fields.items()
        ]
    )


# `JSON` (metadata and its filters): scalars, lists, and objects nested a few levels, so both
# the shapes the server accepts and the ones it must refuse (nesting, null) are drawn.
_JSON_SCALARS = st.one_of(
    st.just(nodes.Null),
    st.booleans().map(nodes.Boolean),
    st.integers(-(2**40), 2**40).map(nodes.Int),
    st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
    st.text(max_size=20).map(nodes.String),
)
schemathesis.graphql.scalar(
    "JSON",
    st.recursive(
        _JSON_SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(nodes.List),
            st.dictionaries(
                st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), inner, max_size=4
            ).map(_json_object),
        ),
        max_leaves=8,
    ),
)

MASKED_CODE = "INTERNAL_SERVER_ERROR"
"""The code of an unexpected exception, masked by `rag_gql.graphql.extensions.DomainErrors`."""


@dataclass
class Failure:
    """One response that broke a rule: the operation label, the request's GraphQL text and
    variables, the status and the body (up to 2,000 characters), and why it failed."""

    operation: str
    query: str
    variables: dict[str, Any] | None
    status: int
    body: str
    reason: str


@dataclass
class Report:
    """The outcome of a fuzz run.

    Attributes:
        cases: requests sent (each one generated case).
        seconds: wall-clock time of the run.
        by_operation: cases per operation label (`Query.search`, `Mutation.login`, ...).
        by_mode: cases per generation mode (`positive`: schema-valid; `negative`: invalid).
        outcomes: responses by outcome: `ok` (data, no errors) or each error's code.
        statuses: responses by HTTP status.
        failures: responses with a status >= 500, a body that is not a GraphQL response, an
            error without `extensions.code`, a message holding a stack trace, or a masked
            `INTERNAL_SERVER_ERROR` (a bug the masking hid from the client, but a bug).
    """

    cases: int = 0
    seconds: float = 0.0
    by_operation: Counter[str] = field(default_factory=Counter)
    by_mode: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)

    def describe_failures(self, limit: int = 10) -> str:
        """The first `limit` failures, one paragraph each (for assertion messages)."""
        lines = []
        for failure in self.failures[:limit]:
            lines.append(
                f"{failure.operation}: {failure.reason} (HTTP {failure.status})\n"
                f"  query: {failure.query}\n  variables: {json.dumps(failure.variables)}\n"
                f"  response: {failure.body}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines: cases, rate, modes, statuses, outcomes, failures."""
        rate = self.cases / self.seconds if self.seconds else 0.0
        outcomes = ", ".join(f"{code} {n}" for code, n in self.outcomes.most_common())
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return (
            f"{self.cases} cases over {len(self.by_operation)} operations in "
            f"{self.seconds:.1f} s ({rate:.0f}/s); "
            f"{self.by_mode['positive']} schema-valid, {self.by_mode['negative']} invalid\n"
            f"HTTP status: {statuses}\n"
            f"outcomes (per error, `ok` = data without errors): {outcomes}\n"
            f"failures: {len(self.failures)}"
        )


def check(status: int, text: str) -> tuple[list[str], str | None]:
    """Judges one response: returns (its outcomes, the reason it fails or None).

    Outcomes are `ok` for a response without errors, else each error's `extensions.code`.
    """
    if status >= 500:
        return [f"HTTP {status}"], f"server error {status}"
    try:
        body = json.loads(text)
    except ValueError:
        return ["not JSON"], "the body is not JSON"
    if not isinstance(body, dict) or not ("data" in body or "errors" in body):
        return ["not GraphQL"], "the body is not a GraphQL response"
    errors = body.get("errors") or []
    if not errors:
        return ["ok"], None
    outcomes: list[str] = []
    reason = None
    for error in errors:
        code = (error.get("extensions") or {}).get("code")
        message = str(error.get("message", ""))
        outcomes.append(code if isinstance(code, str) else "no code")
        if not isinstance(code, str):
            reason = reason or "an error without extensions.code"
        elif code == MASKED_CODE:
            reason = reason or "an unexpected exception (masked)"
        if TRACEBACK.search(message):
            reason = reason or "a stack trace in a message"
    return outcomes, reason


def run(
    base_url: str,
    token: str,
    *,
    cases: int,
    seed: int = 0,
    workspace: str | None = None,
    timeout: float = 30.0,
) -> Report:
    """Fuzzes every query and mutation of the server at `base_url` with at least `cases`
    requests (spread evenly; half schema-valid, half invalid), as the holder of `token`.

    Args:
        base_url: like `http://127.0.0.1:8000` (the schema comes from `/graphql` by
            introspection, which must be on).
        token: an access token, sent as `Authorization: Bearer ...` on every request.
        cases: the least number of requests to send; rounds with new seeds run until reached.
        seed: hypothesis seed of the first round (runs are reproducible).
        workspace: sent as `X-Workspace-Id` when given.
        timeout: seconds per request.

    Returns:
        The `Report`; its `failures` list every response that broke a rule.

    Raises:
        requests.RequestException: the schema could not be loaded, or a request failed at
            the transport level (connection refused or reset, timeout).
    """
    headers = {"Authorization": f"Bearer {token}"}
    if workspace:
        headers["X-Workspace-Id"] = workspace
    schema = schemathesis.graphql.from_url(f"{base_url}/graphql", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    report = Report()
    started = time.perf_counter()
    round_number = 0
    with requests.Session() as session:
        while report.cases < cases:
            per_operation = math.ceil((cases - report.cases) / (2 * len(operations)))
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    _fuzz_operation(
                        operation,
                        mode,
                        examples=per_operation,
                        seed=seed + round_number,
                        session=session,
                        base_url=base_url,
                        headers=headers,
                        timeout=timeout,
                        report=report,
                    )
            round_number += 1
    report.seconds = time.perf_counter() - started
    return report


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    *,
    examples: int,
    seed: int,
    session: requests.Session,
    base_url: str,
    headers: dict[str, str],
    timeout: float,
    report: Report,
) -> None:
    """Sends up to `examples` generated cases of one operation; records them in `report`.

    Hypothesis may draw fewer when the operation has few distinct cases.
    """

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        # Draw and send only: no replay of stored examples, no shrinking (failures are
        # collected, not raised).
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout)
        text = response.content.decode("utf-8", "replace")
        outcomes, reason = check(response.status_code, text)
        report.cases += 1
        report.by_operation[operation.label] += 1
        report.by_mode[mode.value] += 1
        report.statuses[response.status_code] += 1
        report.outcomes.update(outcomes)
        if reason is not None:
            body = case.body if isinstance(case.body, dict) else {}
            report.failures.append(
                Failure(
                    operation=operation.label,
                    query=str(body.get("query", case.body)),
                    variables=body.get("variables"),
                    status=response.status_code,
                    body=text[:2000],
                    reason=reason,
                )
            )

    # Negative mode on an operation without arguments to corrupt has nothing to send.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        send()
