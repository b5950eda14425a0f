"""A short GraphQL fuzz run (schemathesis; bench/fuzz.py runs 1,000+ cases): every query and
mutation, schema-valid and invalid, as a verified user whose workspace holds a document. No
response may be a 5xx, and every error must carry `extensions.code`, no stack trace, and not be
a masked internal error."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support import fuzz
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.smtp import Inbox
from tests.support.uploads import assert_error

SAMPLE = Path(__file__).parent / "data" / "formats" / "sample.md"


def test_check_flags_what_the_fuzz_run_must_never_see() -> None:
    assert fuzz.check(200, '{"data": {"me": {"id": "1"}}}') == (["ok"], None)
    assert fuzz.check(502, "Bad Gateway")[1] == "server error 502"
    assert fuzz.check(200, "<html>")[1] == "the body is not JSON"
    no_code = '{"data": null, "errors": [{"message": "boom"}]}'
    assert fuzz.check(200, no_code)[1] == "an error without extensions.code"
    masked = '{"errors": [{"message": "x", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}'
    assert fuzz.check(200, masked)[1] == "an unexpected exception (masked)"
    trace = (
        '{"errors": [{"message": "Traceback (most recent call last): ...", '
        '"extensions": {"code": "BAD_USER_INPUT"}}]}'
    )
    assert fuzz.check(200, trace)[1] == "a stack trace in a message"


async def test_fuzz_every_operation_without_server_errors(
    gql: GraphQLClient, inbox: Inbox, server_url: str
) -> None:
    token = await sign_up(gql, inbox, "fuzz@example.com")
    response = await gql.upload(SAMPLE.name, SAMPLE.read_bytes(), token=token)
    assert response.json()["data"]["uploadDocument"]["status"] == "READY"

    report = await asyncio.to_thread(fuzz.run, server_url, token, cases=100, seed=1)

    assert report.cases >= 100
    assert not report.failures, report.describe_failures()
    # Both kinds of case reached the server, and some got past validation into resolvers.
    assert report.by_mode["positive"] and report.by_mode["negative"]
    assert report.outcomes["ok"] and report.outcomes["GRAPHQL_VALIDATION_FAILED"]
    assert max(report.statuses) < 500


async def test_nul_characters_are_bad_user_input(gql: GraphQLClient, inbox: Inbox) -> None:
    # Found by the fuzz run: PostgreSQL refuses U+0000 in text, which was a masked internal
    # error from deep inside `ask` (storing the question).
    token = await sign_up(gql, inbox, "nul@example.com")
    literal = await gql.execute(
        'mutation { createWorkspace(name: "a\\u0000b") { id } }', token=token
    )
    assert_error(literal, "BAD_USER_INPUT", "NUL")
    ask = "mutation($q: String!) { ask(question: $q) { text } }"
    variable = await gql.execute(ask, {"q": "margins\x00?"}, token=token)
    assert_error(variable, "BAD_USER_INPUT", "NUL")
    nested = await gql.execute(
        'query($f: SearchFilter) { search(query: "x", filter: $f) { text } }',
        {"f": {"filenames": ["a\x00.pdf"]}},
        token=token,
    )
    assert_error(nested, "BAD_USER_INPUT", "NUL")
    assert literal.get("data") is None and variable.get("data") is None


async def test_upload_given_as_a_value_is_bad_user_input(gql: GraphQLClient, inbox: Inbox) -> None:
    # Found by the fuzz run: `uploadDocument(file: "text")` in a JSON request reached the
    # resolver as a str (AttributeError, masked as INTERNAL_SERVER_ERROR).
    token = await sign_up(gql, inbox, "literal@example.com")
    body = await gql.execute('mutation { uploadDocument(file: "abc") { id } }', token=token)
    assert_error(body, "BAD_USER_INPUT", "multipart")
