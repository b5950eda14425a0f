"""A small GraphQL client for tests: HTTP (JSON and multipart uploads) and WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

Json = dict[str, Any]


class GraphQLClient:
    """Talks to one rag-gql server at `base_url` (like `http://127.0.0.1:PORT`)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        workspace: str | None = None,
    ) -> Json:
        """POSTs a JSON request; returns the whole response body (`data`, `errors`).

        `workspace` is sent as `X-Workspace-Id`.
        """
        headers = _headers(token, workspace)
        response = await self.http.post(
            f"{self.base_url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body: Json = response.json()
        return body

    async def data(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        workspace: str | None = None,
    ) -> Json:
        """Like `execute`, but asserts there were no errors and returns `data`."""
        body = await self.execute(query, variables, token=token, workspace=workspace)
        assert not body.get("errors"), body["errors"]
        data: Json = body["data"]
        return data

    async def upload(
        self,
        filename: str,
        content: bytes,
        *,
        token: str | None,
        preflight: bool = True,
        fields: str = "id filename sha256 pageCount chunkCount status duplicate createdAt",
        workspace: str | None = None,
        collection: str | None = None,
        metadata: Any = None,
        wait: bool = True,
    ) -> httpx.Response:
        """Sends `uploadDocument` as a GraphQL multipart request; returns the raw response.

        The document comes back QUEUED and a worker ingests it. With `wait` (the default), this
        then polls `document(id)` until it is READY or FAILED, and returns a response whose
        body holds that final state (with the upload's own `duplicate` flag).
        """
        operations = {
            "query": "mutation($file: Upload!, $c: ID, $m: JSON) "
            f"{{ uploadDocument(file: $file, collectionId: $c, metadata: $m) {{ {fields} }} }}",
            "variables": {"file": None, "c": collection, "m": metadata},
        }
        headers = _headers(token, workspace)
        if preflight:
            headers["Apollo-Require-Preflight"] = "true"
        response = await self.http.post(
            f"{self.base_url}/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": (filename, content, "application/pdf")},
            headers=headers,
        )
        if not wait or response.status_code != 200:
            return response
        body: Json = response.json()
        document = (body.get("data") or {}).get("uploadDocument")
        if not document or body.get("errors") or "id" not in document:
            return response
        final = await self.wait_for_document(
            document["id"], fields=fields, token=token, workspace=workspace
        )
        final["duplicate"] = document.get("duplicate", final.get("duplicate"))
        return httpx.Response(200, json={"data": {"uploadDocument": final}})

    async def wait_for_document(
        self,
        document_id: str,
        *,
        fields: str = "id status error pageCount chunkCount",
        token: str | None,
        workspace: str | None = None,
        timeout: float = 60.0,
    ) -> Json:
        """Polls `document(id)` until READY or FAILED; returns it (`fields` plus `status`).

        Raises:
            TimeoutError: not finished within `timeout` seconds.
        """
        query = f"query($id: ID!) {{ document(id: $id) {{ status {fields} }} }}"
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            data = await self.data(query, {"id": document_id}, token=token, workspace=workspace)
            document: Json = data["document"]
            if document["status"] in ("READY", "FAILED"):
                return document
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"document {document_id} still {document['status']}")
            await asyncio.sleep(0.05)

    def websocket(self) -> connect:
        """Opens a `graphql-transport-ws` WebSocket (use with `async with`)."""
        url = self.base_url.replace("http://", "ws://") + "/graphql"
        return connect(url, subprotocols=[Subprotocol("graphql-transport-ws")])


async def init(ws: ClientConnection, payload: Json) -> Json:
    """Sends `connection_init` with `payload`; returns the server's reply."""
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    reply: Json = json.loads(await ws.recv())
    return reply


async def subscribe(
    ws: ClientConnection, query: str, variables: Mapping[str, Any], op_id: str = "1"
) -> AsyncIterator[Json]:
    """Sends `subscribe`; yields each `next` payload until `complete` (raises on `error`)."""
    message = {"query": query, "variables": dict(variables)}
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": message}))
    while True:
        frame: Json = json.loads(await ws.recv())
        if frame.get("id") != op_id:
            continue
        if frame["type"] == "next":
            yield frame["payload"]
        elif frame["type"] == "complete":
            return
        elif frame["type"] == "error":
            raise AssertionError(f"subscription error: {frame['payload']}")


def _headers(token: str | None, workspace: str | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if workspace:
        headers["X-Workspace-Id"] = workspace
    return headers
