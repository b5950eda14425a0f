"""`documentEvents` over a real WebSocket: a stream ends once its caller loses access, it
converges after the listening connection drops, and collections' deletions reach it.

Covered elsewhere: progress to READY and `deleteDocument` (test_ingestion), the operation
limits of a socket (test_websocket_limits), who may subscribe at all (test_attacks).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.repositories import documents
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect as sql
from tests.test_workspaces import invite_and_join, user_id

EVENTS = (
    "subscription($id: ID) { documentEvents(documentId: $id) { documentId status error deleted } }"
)
WORKSPACES = "{ workspaces { id personal } }"
CREATE_KEY = (
    'mutation($w: ID!) { createApiKey(workspaceId: $w, name: "feed", role: VIEWER) '
    "{ secret apiKey { id } } }"
)
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }"
REMOVE = "mutation($w: ID!, $u: ID!) { removeMember(workspaceId: $w, userId: $u) }"
DOCUMENT = "query($id: ID!) { document(id: $id) { status error } }"
LISTENER = "LISTEN %rag_gql_document_events%"
"""What `pg_stat_activity.query` shows for the API's listening connection."""


@asynccontextmanager
async def events(
    gql: GraphQLClient, credentials: Json, document_id: str | None = None
) -> AsyncIterator[ClientConnection]:
    """A socket acknowledged for `credentials`, subscribed (operation "1") to documentEvents."""
    async with gql.websocket() as ws:
        assert (await init(ws, credentials))["type"] == "connection_ack"
        payload = {"query": EVENTS, "variables": {"id": document_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        yield ws


async def frame(ws: ClientConnection, timeout: float = 20.0) -> Json:
    """The next message of operation "1"."""
    async with asyncio.timeout(timeout):
        while True:
            message: Json = json.loads(await ws.recv())
            if message.get("id") == "1":
                return message


async def event(ws: ClientConnection, until: Callable[[Json], bool] = lambda _: True) -> Json:
    """Skips events up to the first that `until` accepts; returns it."""
    while True:
        message = await frame(ws)
        assert message["type"] == "next" and not message["payload"].get("errors"), message
        got: Json = message["payload"]["data"]["documentEvents"]
        if until(got):
            return got


async def ending(ws: ClientConnection) -> Json:
    """Skips events up to the error that ends the stream, which must then complete; returns
    that error."""
    while True:
        message = await frame(ws)
        assert message["type"] == "next", message
        errors = message["payload"].get("errors")
        if errors:
            assert message["payload"].get("data") is None, message
            assert (await frame(ws))["type"] == "complete"
            (error,) = errors
            return dict(error)


async def personal_workspace(gql: GraphQLClient, token: str) -> str:
    workspaces = (await gql.data(WORKSPACES, token=token))["workspaces"]
    (personal,) = [w["id"] for w in workspaces if w["personal"]]
    return str(personal)


async def upload(
    gql: GraphQLClient,
    token: str,
    text: str,
    *,
    workspace: str | None = None,
    collection: str | None = None,
) -> str:
    """Uploads a one-page PDF without waiting for its ingestion; returns its id."""
    response = await gql.upload(
        "note.pdf",
        make_pdf([text]),
        token=token,
        wait=False,
        workspace=workspace,
        collection=collection,
    )
    document_id: str = response.json()["data"]["uploadDocument"]["id"]
    return document_id


async def test_an_expired_access_token_ends_the_stream(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    settings = settings.model_copy(
        update={"access_token_ttl": 8, "subscription_reauth_seconds": 0.2}
    )
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        async with events(gql, {"authorization": f"Bearer {token}"}) as ws:
            await upload(gql, token, "Water the ferns on Mondays.")
            await event(ws)  # live: the upload's progress
            error = await ending(ws)
    assert error["extensions"]["code"] == "UNAUTHENTICATED", error
    assert "expired" in error["message"], error


async def test_removal_from_the_workspace_ends_the_stream(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    settings = settings.model_copy(update={"subscription_reauth_seconds": 0.2})
    async with serve_client(settings) as gql:
        alice = await sign_up(gql, inbox, "alice@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        team = (await gql.data('mutation { createWorkspace(name: "Team") { id } }', token=alice))[
            "createWorkspace"
        ]["id"]
        await invite_and_join(gql, inbox, alice, team, "bob@example.com", bob, "VIEWER")
        credentials = {"authorization": f"Bearer {bob}", "workspaceId": team}
        async with events(gql, credentials) as ws:
            await upload(gql, alice, "Oil the hinges twice a year.", workspace=team)
            await event(ws)  # live: bob sees the team's upload
            removed = await gql.data(REMOVE, {"w": team, "u": await user_id(gql, bob)}, token=alice)
            assert removed == {"removeMember": True}
            error = await ending(ws)
    assert error["extensions"]["code"] == "FORBIDDEN", error
    assert "no longer a member" in error["message"], error


async def test_revoking_the_api_key_ends_the_stream(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    settings = settings.model_copy(update={"subscription_reauth_seconds": 0.2})
    async with serve_client(settings) as gql:
        alice = await sign_up(gql, inbox, "alice@example.com")
        workspace = await personal_workspace(gql, alice)
        created = (await gql.data(CREATE_KEY, {"w": workspace}, token=alice))["createApiKey"]
        async with events(gql, {"apiKey": created["secret"]}) as ws:
            await upload(gql, alice, "Descale the kettle monthly.")
            await event(ws)  # live: the key sees the workspace's upload
            await gql.data(REVOKE_KEY, {"id": created["apiKey"]["id"]}, token=alice)
            error = await ending(ws)
    assert error["extensions"]["code"] == "UNAUTHENTICATED", error


async def drop_listener_while(
    settings: Settings, workspace_id: uuid.UUID, change: Callable[[AsyncSession], Awaitable[None]]
) -> None:
    """Runs `change(session)` in a transaction in `workspace_id` that commits only once the
    API's listening connection has been terminated, so its notification reaches no listener
    (the API reconnects about a second later)."""
    db = Database(settings.database_url or "")
    try:
        async with sql(settings) as admin:
            ((listener,),) = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE $1", LISTENER
            )
            async with db.transaction(workspace_id) as session:
                await change(session)
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener)
                gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
                async with asyncio.timeout(10):
                    while True:  # the backend takes a moment to exit
                        if await admin.fetchval(gone, listener):
                            break
                        await asyncio.sleep(0.01)
    finally:
        await db.dispose()


@pytest.mark.parametrize("change", ["finished", "deleted"])
async def test_a_change_lost_while_the_listener_reconnects_is_resent(
    settings: Settings, inbox: Inbox, ollama: StandinState, change: str
) -> None:
    """A document waiting for a retry is finished (or deleted) while the API's listening
    connection is down: after it reconnects, the document's own stream and the workspace's
    both get its current state."""
    settings = settings.model_copy(update={"ingest_retry_base_wait": 60})
    async with serve_client(settings) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        credentials = {"authorization": f"Bearer {token}"}
        ollama.fail_status = 503
        async with events(gql, credentials) as everything:
            document_id = await upload(gql, token, "Rotate the tyres every autumn.")
            waiting = await event(everything, lambda e: (e["error"] or "").startswith("will retry"))
            assert waiting["status"] == "QUEUED"
            async with events(gql, credentials, document_id) as one:
                assert (await event(one))["status"] == "QUEUED"

                workspace_id = uuid.UUID(await personal_workspace(gql, token))
                ids = {"workspace_id": workspace_id, "document_id": uuid.UUID(document_id)}

                async def finish(session: AsyncSession) -> None:
                    if change == "finished":
                        assert await documents.set_state(
                            session,
                            workspace_id=ids["workspace_id"],
                            document_id=ids["document_id"],
                            status="READY",
                            error=None,
                        )
                    else:
                        assert await documents.delete_document(session, **ids)

                await drop_listener_while(settings, workspace_id, finish)

                expected = ("READY", False) if change == "finished" else ("QUEUED", True)
                last = await event(one)
                assert (last["documentId"], last["status"], last["deleted"]) == (
                    document_id,
                    *expected,
                ), last
                assert (await frame(one))["type"] == "complete"
            mine = await event(everything, lambda e: e["documentId"] == document_id)
            assert (mine["status"], mine["deleted"]) == expected, mine
        async with sql(settings) as admin:  # the API listens again
            assert await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1", LISTENER
            )


async def test_deleting_a_collection_sends_deleted_events(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "ada@example.com")
    collection = (
        await gql.data('mutation { createCollection(name: "Manuals") { id } }', token=token)
    )["createCollection"]["id"]
    inside = {
        await upload(gql, token, f"Manual {n}: press the red button.", collection=collection)
        for n in range(2)
    }
    for document_id in inside:
        await gql.wait_for_document(document_id, token=token)
    async with events(gql, {"authorization": f"Bearer {token}"}) as ws:
        loose = await upload(gql, token, "A loose note about the blue button.")
        await event(ws, lambda e: e["documentId"] == loose)  # the stream is live
        deleted = await gql.data(
            "mutation($id: ID!) { deleteCollection(id: $id) }", {"id": collection}, token=token
        )
        assert deleted == {"deleteCollection": True}
        seen: dict[str, Json] = {}
        while set(seen) != inside:
            got = await event(ws, lambda e: e["documentId"] in inside)
            seen[got["documentId"]] = got
    assert all(e["deleted"] and e["status"] == "READY" for e in seen.values()), seen
