"""Subscriptions over HTTP as a client sees them: the multipart subscription protocol, read
with httpx streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.support.graphql_client import GraphQLClient, Json

STREAM_ACCEPT = 'multipart/mixed;subscriptionSpec="1.0", application/json'
"""What Apollo Client sends for a subscription over HTTP."""


@asynccontextmanager
async def open_stream(
    gql: GraphQLClient,
    query: str,
    variables: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
) -> AsyncIterator[httpx.Response]:
    """POSTs `query` asking for a multipart stream; yields the response, headers read and
    body not (leaving the block closes the connection, as a client that goes away)."""
    sent = {"Accept": STREAM_ACCEPT, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    body = {"query": query, "variables": dict(variables or {})}
    async with gql.http.stream("POST", f"{gql.base_url}/graphql", json=body, headers=sent) as r:
        yield r


def is_stream(response: httpx.Response) -> bool:
    """The response is a multipart subscription stream (not a JSON answer)."""
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("multipart/mixed")


async def parts(response: httpx.Response) -> AsyncIterator[Json]:
    """Yields each JSON part of a multipart stream as it arrives, heartbeats (`{}`) included,
    until the closing delimiter.

    Raises:
        AssertionError: not a multipart stream, or a part that is not JSON.
    """
    content_type = response.headers.get("content-type", "")
    assert is_stream(response), (response.status_code, content_type)
    params = dict(
        p.strip().split("=", 1) for p in content_type.replace(",", ";").split(";") if "=" in p
    )
    delimiter = f"\r\n--{params['boundary'].strip(chr(34))}"
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while (at := buffer.find(delimiter)) >= 0:
            part, buffer = buffer[:at], buffer[at + len(delimiter) :]
            if not part.strip():
                continue
            head, _, body = part.partition("\r\n\r\n")
            assert "application/json" in head.lower(), part
            yield json.loads(body)
        if buffer.startswith("--"):
            return  # the closing delimiter: the subscription completed


async def payloads(response: httpx.Response) -> AsyncIterator[Json]:
    """The `payload` of each part that has one (heartbeats skipped)."""
    async for part in parts(response):
        if part:
            payload: Json = part["payload"]
            yield payload


async def all_payloads(response: httpx.Response) -> list[Json]:
    """Every payload, up to the end of the stream."""
    return [payload async for payload in payloads(response)]
