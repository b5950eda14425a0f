"""Fair use, through the real API: a workspace's storage quota (also under concurrent uploads),
ingestion taken round-robin by workspace, rate limits on the operations that cost work or send
mail (an API key counting as the user who created it), and caps on WebSockets per user and IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from rag_gql.db import Database
from rag_gql.ingestion import queue
from rag_gql.repositories.documents import EVENTS_CHANNEL
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.pdfs import make_pdf
from tests.support.serving import serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect

DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
REINDEX = "mutation($id: ID!) { reindexDocument(id: $id) { id status } }"
CREATE_WORKSPACE = "mutation($n: String!) { createWorkspace(name: $n) { id } }"
CREATE_KEY = (
    "mutation($w: ID!, $n: String!) "
    "{ createApiKey(workspaceId: $w, name: $n, role: EDITOR) { secret } }"
)
INVITE = (
    "mutation($w: ID!, $e: String!) "
    "{ inviteMember(workspaceId: $w, email: $e, role: VIEWER) { id } }"
)
PERSONAL = "{ workspaces { id personal } }"


def pdf(n: int) -> bytes:
    """A small one-page PDF of its own (distinct bytes for each `n`)."""
    return make_pdf([f"Field note number {n}: the kestrel hovered over dune {n}."])


def quota_error(body: Json, quota: str) -> Json:
    """Asserts a QUOTA_EXCEEDED error (no data) for `quota`; returns its extensions."""
    assert body.get("data") is None, body
    (error,) = body["errors"]
    extensions: Json = error["extensions"]
    assert extensions["code"] == "QUOTA_EXCEEDED", error
    assert extensions["quota"] == quota, error
    assert set(extensions) == {"code", "quota", "used", "limit", "requested"}, error
    assert str(extensions["used"]) in error["message"], error
    assert str(extensions["limit"]) in error["message"], error
    assert quota in error["message"], error
    return extensions


def rate_limited(body: Json, *fragments: str) -> None:
    """Asserts a RATE_LIMITED error with `retryAfter`, saying each of `fragments`."""
    assert body.get("data") is None, body
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED", error
    assert 1 <= error["extensions"]["retryAfter"] <= 3600, error
    for fragment in fragments:
        assert fragment in error["message"], error


async def personal_workspace(gql: GraphQLClient, token: str) -> str:
    data = await gql.data(PERSONAL, token=token)
    (workspace,) = [w["id"] for w in data["workspaces"] if w["personal"]]
    return str(workspace)


async def as_key(gql: GraphQLClient, secret: str, query: str, variables: Json) -> Json:
    """Runs `query` with an API key (`X-API-Key`)."""
    request = {"query": query, "variables": variables}
    response = await gql.http.post(
        f"{gql.base_url}/graphql", json=request, headers={"X-API-Key": secret}
    )
    body: Json = response.json()
    return body


# --- storage quota -------------------------------------------------------------------------


async def test_storage_quota_gives_the_figures_and_deleting_frees_it(
    inbox: Inbox, settings: Settings
) -> None:
    size = len(pdf(1))
    quota = settings.model_copy(
        update={"workspace_max_documents": 2, "workspace_max_bytes": 10 * size}
    )
    async with serve_client(quota) as gql:
        token = await sign_up(gql, inbox, "ada@example.com")
        first = (await gql.upload("1.pdf", pdf(1), token=token, wait=False)).json()
        await gql.upload("2.pdf", pdf(2), token=token, wait=False)
        body = (await gql.upload("3.pdf", pdf(3), token=token, wait=False)).json()
        figures = quota_error(body, "WORKSPACE_MAX_DOCUMENTS")
        assert figures["used"] == 2 and figures["limit"] == 2 and figures["requested"] == 1
        assert "'3.pdf'" in body["errors"][0]["message"]
        # Refused whole: no document, no stored bytes, no job.
        async with connect(settings) as conn:
            assert await conn.fetchval("SELECT count(*) FROM document") == 2
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM procrastinate_jobs WHERE args->>'document_id' NOT IN "
                    "(SELECT id::text FROM document)"
                )
                == 0
            )
        # Deleting a document frees its place.
        await gql.data(DELETE, {"id": first["data"]["uploadDocument"]["id"]}, token=token)
        assert (await gql.upload("3.pdf", pdf(3), token=token, wait=False)).json()["data"]

    tight = settings.model_copy(update={"workspace_max_bytes": 2 * size + size // 2})
    async with serve_client(tight) as gql:
        other = await sign_up(gql, inbox, "bob@example.com")
        first = (await gql.upload("a.pdf", pdf(10), token=other, wait=False)).json()
        await gql.upload("b.pdf", pdf(11), token=other, wait=False)
        big = make_pdf([f"Page {n} of a longer report on dunes and kestrels." for n in range(9)])
        body = (await gql.upload("big.pdf", big, token=other, wait=False)).json()
        figures = quota_error(body, "WORKSPACE_MAX_BYTES")
        async with connect(settings) as conn:
            used = await conn.fetchval(
                "SELECT sum(d.size_bytes) FROM document d JOIN membership m "
                'ON m.workspace_id = d.workspace_id JOIN "user" u ON u.id = m.user_id '
                "WHERE u.email = 'bob@example.com'"
            )
        assert figures == {
            "code": "QUOTA_EXCEEDED",
            "quota": "WORKSPACE_MAX_BYTES",
            "used": used,
            "limit": tight.workspace_max_bytes,
            "requested": len(big),
        }
        assert f"({len(big)} bytes)" in body["errors"][0]["message"]
        # Another workspace has its own quota.
        carol = await sign_up(gql, inbox, "carol@example.com")
        assert (await gql.upload("c.pdf", pdf(12), token=carol, wait=False)).json()["data"]
        await gql.data(DELETE, {"id": first["data"]["uploadDocument"]["id"]}, token=other)
        assert (await gql.upload("c.pdf", pdf(12), token=other, wait=False)).json()["data"]


@asynccontextmanager
async def held_at_the_file_parts(settings: Settings, waiters: int) -> AsyncIterator[None]:
    """Lets the block start uploads, which all stop at storing their bytes (the table is
    locked) until `waiters` of them wait there; then lets them all go at once, so that
    their quota checks race."""
    async with connect(settings) as conn:
        locked = conn.transaction()
        await locked.start()
        await conn.execute("LOCK TABLE document_file_part IN EXCLUSIVE MODE")
        yield
        async with asyncio.timeout(20):
            while True:
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted "
                    "AND relation = 'document_file_part'::regclass"
                )
                if waiting >= waiters:
                    break
                await asyncio.sleep(0.02)
        await locked.commit()


def bulky(n: int) -> bytes:
    """A PDF of six full pages, many times the size of `pdf(n)`."""
    return make_pdf([f"Report {n}, page {p}: " + "dunes and kestrels " * 40 for p in range(6)])


async def test_concurrent_uploads_cannot_pass_the_quota_together(
    inbox: Inbox, settings: Settings
) -> None:
    sizes = [len(bulky(n)) for n in range(10, 15)]
    limit = 2 * max(sizes) + min(sizes) // 2  # two of Bob's files fit, not three
    assert 4 * max(len(pdf(n)) for n in range(5)) < limit  # Ada's fit but for their number
    quotas = settings.model_copy(
        update={"workspace_max_documents": 3, "workspace_max_bytes": limit}
    )
    async with serve_client(quotas) as gql:
        ada = await sign_up(gql, inbox, "ada@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        await gql.upload("first.pdf", pdf(99), token=ada, wait=False)
        # Ada's uploads race for the last two document places, Bob's for the bytes of two.
        async with held_at_the_file_parts(settings, 10):
            uploads = [
                asyncio.ensure_future(gql.upload(f"{n}.pdf", pdf(n), token=ada, wait=False))
                for n in range(5)
            ] + [
                asyncio.ensure_future(gql.upload(f"{n}.pdf", bulky(n), token=bob, wait=False))
                for n in range(10, 15)
            ]
        bodies = [response.json() for response in await asyncio.gather(*uploads)]
    refused = [b["errors"][0]["extensions"] for b in bodies if b.get("errors")]
    assert (
        sorted(e["quota"] for e in refused)
        == ["WORKSPACE_MAX_BYTES"] * 3 + ["WORKSPACE_MAX_DOCUMENTS"] * 3
    ), bodies
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT u.email, count(*) AS n, sum(d.size_bytes) AS bytes FROM document d "
            "JOIN membership m ON m.workspace_id = d.workspace_id "
            'JOIN "user" u ON u.id = m.user_id GROUP BY u.email ORDER BY u.email'
        )
    assert [(r["email"], r["n"]) for r in rows] == [("ada@example.com", 3), ("bob@example.com", 2)]
    assert rows[1]["bytes"] <= limit


# --- ingestion fairness --------------------------------------------------------------------


async def test_a_workspace_with_many_queued_files_does_not_starve_another(
    inbox: Inbox, settings: Settings
) -> None:
    """Ada queues 30 files while no worker runs, then Bob one; a single worker running one
    job at a time makes Bob's READY second, not 31st."""
    idle = settings.model_copy(update={"worker_in_process": False})
    async with serve_client(idle) as gql:
        ada = await sign_up(gql, inbox, "ada@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        for n in range(30):
            await gql.upload(f"ada-{n}.pdf", pdf(n), token=ada, wait=False)
        response = await gql.upload("bob.pdf", pdf(99), token=bob, wait=False)
        bobs = response.json()["data"]["uploadDocument"]["id"]

    ready: list[str] = []

    def on_event(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        state = json.loads(payload)
        if state["status"] == "READY":
            ready.append(state["document_id"])

    async with connect(settings) as conn:
        await conn.add_listener(EVENTS_CHANNEL, on_event)
        one_at_a_time = settings.model_copy(update={"worker_concurrency": 1})
        async with serve_client(one_at_a_time) as gql:
            await gql.wait_for_document(bobs, token=bob)
            await asyncio.sleep(0.1)  # the notification follows the commit
        await conn.remove_listener(EVENTS_CHANNEL, on_event)
    assert bobs in ready, ready
    assert ready.index(bobs) <= 1, f"Bob's document came {ready.index(bobs) + 1} of {len(ready)}"


DOCUMENT_IDS = {f"{w}{n}": uuid.uuid4() for w in "abcd" for n in range(1, 5)}


async def fetch_order(settings: Settings) -> list[str]:
    """The waiting ingestion jobs' documents by name, in the order workers take them."""
    names = {str(v): k for k, v in DOCUMENT_IDS.items()}
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT args->>'document_id' AS document FROM procrastinate_jobs "
            "WHERE status = 'todo' AND task_name = $1 ORDER BY priority DESC, id",
            queue.INGEST_TASK,
        )
    return [names[r["document"]] for r in rows]


async def test_jobs_are_taken_round_robin_by_workspace(settings: Settings) -> None:
    """The order procrastinate takes jobs in (priority, then age): one job of each waiting
    workspace in turn; a workspace arriving later joins the turn being taken, neither ahead
    of the jobs already at its level nor behind the longest line."""
    assert settings.database_url is not None
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    db = Database(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    try:

        async def defer(workspace: uuid.UUID, name: str) -> None:
            async with db.transaction(workspace) as session:
                await queue.defer_ingest(
                    session, document_id=DOCUMENT_IDS[name], workspace_id=workspace
                )

        for name in ("a1", "a2", "a3", "a4"):
            await defer(a, name)
        for name in ("b1", "b2"):
            await defer(b, name)
        await defer(c, "c1")
        assert await fetch_order(settings) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
        # The first turn is taken; then D's first job joins the second.
        async with connect(settings) as conn:
            for name in ("a1", "b1", "c1"):
                await conn.execute(
                    "DELETE FROM procrastinate_jobs WHERE args->>'document_id' = $1",
                    str(DOCUMENT_IDS[name]),
                )
        await defer(d, "d1")
        await defer(d, "d2")
        assert await fetch_order(settings) == ["a2", "b2", "d1", "a3", "d2", "a4"]
    finally:
        await db.dispose()


# --- rate limits ---------------------------------------------------------------------------


async def test_rate_limits_on_reindex_workspaces_keys_and_invitations(
    inbox: Inbox, settings: Settings
) -> None:
    limits = settings.model_copy(
        update={
            "rate_limit_reindex_per_user": "2/minute",
            "rate_limit_create_workspace_per_user": "2/hour",
            "rate_limit_create_api_key_per_user": "2/hour",
            "rate_limit_invite_per_user": "3/hour",
            "rate_limit_invite_per_workspace": "4/hour",
        }
    )
    async with serve_client(limits) as gql:
        ada = await sign_up(gql, inbox, "ada@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        document = (await gql.upload("notes.pdf", pdf(1), token=ada)).json()
        document_id = document["data"]["uploadDocument"]["id"]
        for _ in range(2):
            await gql.data(REINDEX, {"id": document_id}, token=ada)
        rate_limited(
            await gql.execute(REINDEX, {"id": document_id}, token=ada),
            "Too many reindex requests from you (at most 2 per 1 minute)",
        )

        workspaces = [
            (await gql.data(CREATE_WORKSPACE, {"n": f"team {n}"}, token=ada))["createWorkspace"]
            for n in range(2)
        ]
        rate_limited(
            await gql.execute(CREATE_WORKSPACE, {"n": "one too many"}, token=ada),
            "Too many createWorkspace requests from you",
        )
        team = workspaces[0]["id"]

        for n in range(2):
            await gql.data(CREATE_KEY, {"w": team, "n": f"ci {n}"}, token=ada)
        rate_limited(
            await gql.execute(CREATE_KEY, {"w": team, "n": "ci 3"}, token=ada),
            "Too many createApiKey requests from you (at most 2 per 1 hour)",
        )

        # Invitations: 3 per user, 4 per workspace; Bob (invited as ADMIN) spends the rest.
        invite_admin = INVITE.replace("VIEWER", "ADMIN")
        await gql.data(invite_admin, {"w": team, "e": "bob@example.com"}, token=ada)
        mail = inbox.to("bob@example.com")[-1].get_payload(decode=True)
        assert isinstance(mail, bytes)
        secret = mail.decode().split('acceptInvitation(token: "')[1].split('"')[0]
        await gql.data(
            "mutation($t: String!) { acceptInvitation(token: $t) { id } }", {"t": secret}, token=bob
        )
        for n in range(2):
            await gql.data(INVITE, {"w": team, "e": f"guest{n}@example.com"}, token=ada)
        rate_limited(
            await gql.execute(INVITE, {"w": team, "e": "guest9@example.com"}, token=ada),
            "Too many inviteMember requests from you",
        )
        await gql.data(INVITE, {"w": team, "e": "guest2@example.com"}, token=bob)
        rate_limited(
            await gql.execute(INVITE, {"w": team, "e": "guest3@example.com"}, token=bob),
            "Too many inviteMember requests from this workspace (at most 4 per 1 hour)",
        )
        # A refused invitation sent no mail; Bob's other workspaces are not held back.
        assert not inbox.to("guest9@example.com") and not inbox.to("guest3@example.com")
        own = (await gql.data(CREATE_WORKSPACE, {"n": "bob's"}, token=bob))["createWorkspace"]
        await gql.data(INVITE, {"w": own["id"], "e": "guest4@example.com"}, token=bob)
        # Nobody spends a workspace's allowance from outside it.
        outsider = await sign_up(gql, inbox, "eve@example.com")
        body = await gql.execute(INVITE, {"w": own["id"], "e": "x@example.com"}, token=outsider)
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND", body


async def test_api_keys_of_one_user_share_the_users_allowance(
    inbox: Inbox, settings: Settings
) -> None:
    limits = settings.model_copy(
        update={"rate_limit_reindex_per_user": "3/minute", "rate_limit_search_per_user": "2/minute"}
    )
    async with serve_client(limits) as gql:
        ada = await sign_up(gql, inbox, "ada@example.com")
        workspace = await personal_workspace(gql, ada)
        document = (await gql.upload("notes.pdf", pdf(1), token=ada)).json()
        variables = {"id": document["data"]["uploadDocument"]["id"]}
        keys = [
            (await gql.data(CREATE_KEY, {"w": workspace, "n": f"key {n}"}, token=ada))[
                "createApiKey"
            ]["secret"]
            for n in range(2)
        ]
        assert not (await as_key(gql, keys[0], REINDEX, variables)).get("errors")
        assert not (await as_key(gql, keys[0], REINDEX, variables)).get("errors")
        assert not (await as_key(gql, keys[1], REINDEX, variables)).get("errors")
        # Three reindexes by Ada's two keys: her allowance is spent, by key or by token.
        rate_limited(await as_key(gql, keys[1], REINDEX, variables), "from you (at most 3")
        rate_limited(await gql.execute(REINDEX, variables, token=ada), "from you (at most 3")
        # The same for the older limits (search, answer, upload).
        search = 'query { search(query: "kestrel", k: 1) { page } }'
        assert not (await as_key(gql, keys[0], search, {})).get("errors")
        assert not (await as_key(gql, keys[1], search, {})).get("errors")
        rate_limited(await as_key(gql, keys[0], search, {}), "search requests from you")


# --- WebSocket connections -----------------------------------------------------------------


@asynccontextmanager
async def sockets(
    gql: GraphQLClient, count: int, payload: Json
) -> AsyncIterator[list[tuple[ClientConnection, Json]]]:
    """Opens `count` sockets and sends `connection_init` with `payload` on each; yields each
    with the server's reply (`connection_ack`), keeping them open for the block."""
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(count):
            ws = await stack.enter_async_context(gql.websocket())
            opened.append((ws, await init(ws, payload)))
        yield opened


async def refused(gql: GraphQLClient, payload: Json) -> tuple[int, str]:
    """Opens one more socket; returns the close code and reason it gets at connection_init."""
    async with gql.websocket() as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        with pytest.raises(ConnectionClosed) as closed:
            raise AssertionError(await ws.recv())
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_websockets_are_capped_per_user_and_per_ip(inbox: Inbox, settings: Settings) -> None:
    caps = settings.model_copy(update={"max_websockets_per_user": 2, "max_websockets_per_ip": 4})
    async with serve_client(caps) as gql:
        ada = await sign_up(gql, inbox, "ada@example.com")
        bob = await sign_up(gql, inbox, "bob@example.com")
        workspace = await personal_workspace(gql, ada)
        key = (await gql.data(CREATE_KEY, {"w": workspace, "n": "ci"}, token=ada))["createApiKey"][
            "secret"
        ]
        as_ada = {"authorization": f"Bearer {ada}"}
        async with sockets(gql, 2, as_ada) as open_:
            assert [reply["type"] for _ws, reply in open_] == ["connection_ack"] * 2
            assert await refused(gql, as_ada) == (
                4429,
                "Too many WebSocket connections of this user (at most 2, MAX_WEBSOCKETS_PER_USER)",
            )
            # Her API key is her too; Bob is not held back.
            assert (await refused(gql, {"apiKey": key}))[0] == 4429
            async with sockets(gql, 2, {"authorization": f"Bearer {bob}"}) as bobs:
                assert [reply["type"] for _ws, reply in bobs] == ["connection_ack"] * 2
                # Four from 127.0.0.1: the next is refused before its credentials are read.
                assert await refused(gql, {"authorization": "Bearer nonsense"}) == (
                    4429,
                    "Too many WebSocket connections from this address "
                    "(at most 4, MAX_WEBSOCKETS_PER_IP)",
                )
            # The open sockets still work.
            ws, _ = open_[0]
            await ws.send(
                json.dumps(
                    {"id": "1", "type": "subscribe", "payload": {"query": "{ me { email } }"}}
                )
            )
            assert json.loads(await ws.recv())["payload"]["data"]["me"]["email"]
        # Closed sockets give their places back once the server has seen them go.
        async with asyncio.timeout(5):
            while True:
                with contextlib.suppress(ConnectionClosed):
                    async with sockets(gql, 2, as_ada) as again:
                        if [reply["type"] for _ws, reply in again] == ["connection_ack"] * 2:
                            break
                await asyncio.sleep(0.05)


async def test_a_refused_connection_init_holds_no_place(settings: Settings) -> None:
    """Bad credentials (4403) give back the IP's place they took."""
    caps = settings.model_copy(update={"max_websockets_per_ip": 1})
    async with serve_client(caps) as gql:
        for _ in range(3):
            code, _reason = await refused(gql, {"authorization": "Bearer nonsense"})
            assert code == 4403
