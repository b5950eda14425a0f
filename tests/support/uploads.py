"""Uploads through the API, and the shape every GraphQL error must have."""

from __future__ import annotations

from tests.support.graphql_client import GraphQLClient, Json


def assert_error(body: Json, code: str, *fragments: str) -> str:
    """Asserts the first error's `extensions.code`, that its message says each of `fragments`
    (case-insensitively) and that nothing internal leaks (no traceback, no extra extensions).

    Returns the message.
    """
    errors = body.get("errors")
    assert errors, body
    error = errors[0]
    assert error["extensions"]["code"] == code, error
    message: str = error["message"]
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    assert "Traceback" not in message and 'File "' not in message, message
    assert set(error["extensions"]) == {"code"}, error  # no stacktrace, no exception dump
    return message


async def upload_ok(gql: GraphQLClient, filename: str, content: bytes, token: str) -> Json:
    """Uploads (with the preflight header); asserts success; returns `uploadDocument`."""
    response = await gql.upload(filename, content, token=token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    document: Json = body["data"]["uploadDocument"]
    return document


async def upload_error(gql: GraphQLClient, filename: str, content: bytes, token: str) -> Json:
    """Uploads; asserts a GraphQL error and no data; returns the whole body."""
    response = await gql.upload(filename, content, token=token)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    assert body.get("data") is None, body
    return body
