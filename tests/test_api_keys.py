"""API keys: created once with their secret, stored hashed, acting with their role in their
workspace only; revoked, expired and unknown keys are refused alike; keys of one workspace
are out of reach of another's members and keys."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json, init, subscribe
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error, upload_error, upload_ok
from tests.test_workspaces import invite_and_join, user_id

KEY_FIELDS = "id name role prefix createdAt expiresAt lastUsedAt revokedAt"
CREATE = f"""
mutation($w: ID!, $n: String!, $r: Role!, $e: DateTime) {{
  createApiKey(workspaceId: $w, name: $n, role: $r, expiresAt: $e) {{
    secret apiKey {{ {KEY_FIELDS} }}
  }}
}}
"""
LIST = f"query($w: ID) {{ apiKeys(workspaceId: $w) {{ {KEY_FIELDS} }} }}"
REVOKE = f"mutation($id: ID!) {{ revokeApiKey(id: $id) {{ {KEY_FIELDS} }} }}"
DOCUMENTS = "{ documents(first: 100) { edges { node { id filename } } } }"
DOCUMENT = "query($id: ID!) { document(id: $id) { id } }"
DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
SEARCH = "query($q: String!) { search(query: $q, k: 50) { document { id } } }"
ME = "{ me { id } }"
CREATE_TEAM = "mutation($n: String!) { createWorkspace(name: $n) { id } }"
REMOVE_MEMBER = "mutation($w: ID!, $u: ID!) { removeMember(workspaceId: $w, userId: $u) }"
ANSWER = """
subscription($q: String!) {
  answer(question: $q, k: 50) {
    __typename
    ... on AnswerSources { sources { document { id } } }
    ... on AnswerError { code message }
  }
}
"""
SECRET_FORMAT = re.compile(r"^rgk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")
INVALID = "The API key is invalid, revoked or expired"
PAGES = ["Project Nightingale: the hangar combination is amber walrus seventeen."]
QUESTION = "What is the Nightingale hangar combination?"


async def workspace_of(settings: Settings, email: str) -> str:
    """The id of the user's personal workspace (read with SQL)."""
    async with connect(settings) as conn:
        found = await conn.fetchval(
            'SELECT m.workspace_id FROM membership m JOIN "user" u ON u.id = m.user_id '
            "JOIN workspace w ON w.id = m.workspace_id WHERE u.email = $1 AND w.personal",
            email,
        )
    assert found is not None, email
    return str(found)


async def set_role(settings: Settings, email: str, role: str) -> None:
    """Changes the user's role in their personal workspace (a stand-in for member management)."""
    async with connect(settings) as conn:
        await conn.execute(
            'UPDATE membership SET role = $2 WHERE user_id = (SELECT id FROM "user" '
            "WHERE email = $1)",
            email,
            role,
        )


async def call(
    gql: GraphQLClient,
    query: str,
    variables: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str],
) -> Json:
    """POSTs a JSON GraphQL request with exactly `headers`; returns the whole body."""
    response = await gql.http.post(
        f"{gql.base_url}/graphql",
        json={"query": query, "variables": dict(variables or {})},
        headers=dict(headers),
    )
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def create_key(
    gql: GraphQLClient,
    token: str,
    workspace_id: str,
    role: str,
    *,
    name: str = "ci",
    expires_at: str | None = None,
) -> tuple[str, Json]:
    """Creates a key as the owner of `token`; returns its secret and `apiKey`."""
    data = await gql.data(
        CREATE, {"w": workspace_id, "n": name, "r": role, "e": expires_at}, token=token
    )
    created: Json = data["createApiKey"]
    secret: str = created["secret"]
    return secret, created["apiKey"]


async def document_ids(gql: GraphQLClient, secret: str) -> set[str]:
    """The ids `documents` lists for the key `secret` (sent as `X-API-Key`)."""
    body = await call(gql, DOCUMENTS, headers={"X-API-Key": secret})
    assert not body.get("errors"), body
    return {edge["node"]["id"] for edge in body["data"]["documents"]["edges"]}


async def answer_source_ids(gql: GraphQLClient, init_payload: Json, question: str) -> list[str]:
    """Runs `answer` on a socket opened with `init_payload`; returns the sources' ids."""
    async with gql.websocket() as ws:
        ack = await init(ws, init_payload)
        assert ack["type"] == "connection_ack", ack
        events: list[Json] = []
        async for payload in subscribe(ws, ANSWER, {"q": question}):
            assert not payload.get("errors"), payload
            events.append(payload["data"]["answer"])
    assert events and events[0]["__typename"] == "AnswerSources", events
    assert all(e["__typename"] != "AnswerError" for e in events), events
    return [source["document"]["id"] for source in events[0]["sources"]]


async def assert_ws_rejected(gql: GraphQLClient, init_payload: Json) -> None:
    """The socket is closed with 4403 at `connection_init`."""
    async with gql.websocket() as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await init(ws, init_payload)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def test_create_shows_the_secret_once_and_stores_only_its_hash(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    workspace = await workspace_of(settings, "alice@example.com")
    expires = in_days(30)
    secret, key = await create_key(
        gql, token, workspace, "VIEWER", name="  nightly sync ", expires_at=expires
    )

    assert SECRET_FORMAT.match(secret), secret
    assert key["prefix"] == secret[:12] and key["prefix"].startswith("rgk_")
    assert key["name"] == "nightly sync"
    assert key["role"] == "VIEWER"
    assert datetime.fromisoformat(key["expiresAt"]) == datetime.fromisoformat(expires)
    assert key["lastUsedAt"] is None and key["revokedAt"] is None
    assert datetime.fromisoformat(key["createdAt"]) <= datetime.now(UTC)

    # Listed newest first, by the request's workspace or an explicit one; never the secret.
    second, key2 = await create_key(gql, token, workspace, "EDITOR", name="uploader")
    assert second != secret and key2["prefix"] != key["prefix"]
    for variables in ({}, {"w": workspace}):
        listed = (await gql.data(LIST, variables, token=token))["apiKeys"]
        assert [k["id"] for k in listed] == [key2["id"], key["id"]]
        assert listed[1] == key
    assert secret not in str(await gql.execute(LIST, token=token))

    # The database has the SHA-256 of the whole secret and the prefix, nothing else of it.
    async with connect(settings) as conn:
        rows = await conn.fetch(
            "SELECT key_hash, prefix, row_to_json(api_key)::text AS raw FROM api_key"
        )
        row = await conn.fetchrow(
            "SELECT key_hash, prefix, workspace_id::text, created_by IS NOT NULL AS by_user "
            "FROM api_key WHERE id = $1",
            uuid.UUID(key["id"]),
        )
    assert row is not None
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == secret[:12]
    assert row["workspace_id"] == workspace and row["by_user"]
    random_part = secret[13:]
    for stored in rows:
        assert random_part not in stored["raw"] and second[13:] not in stored["raw"]

    # The key works as `Authorization: Bearer` and as `X-API-Key`.
    for headers in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}):
        body = await call(gql, DOCUMENTS, headers=headers)
        assert body["data"] == {"documents": {"edges": []}}, body


async def test_a_key_acts_with_its_role(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    workspace = await workspace_of(settings, "alice@example.com")
    doc = await upload_ok(gql, "nightingale.pdf", make_pdf(PAGES), token)
    viewer, _ = await create_key(gql, token, workspace, "VIEWER")
    editor, _ = await create_key(gql, token, workspace, "EDITOR")
    admin, _ = await create_key(gql, token, workspace, "ADMIN")

    # VIEWER reads: documents, a document, search, answer (WebSocket, `apiKey`).
    assert await document_ids(gql, viewer) == {doc["id"]}
    body = await call(gql, DOCUMENT, {"id": doc["id"]}, headers={"X-API-Key": viewer})
    assert body["data"] == {"document": {"id": doc["id"]}}, body
    hits = (await gql.data(SEARCH, {"q": QUESTION}, token=viewer))["search"]
    assert hits and hits[0]["document"]["id"] == doc["id"]
    assert await answer_source_ids(gql, {"apiKey": viewer}, QUESTION) == [doc["id"]]
    assert "amber walrus" in "\n".join(m["content"] for m in ollama.last_chat_messages)
    # ... but writes nothing, and has no `me`.
    body = await upload_error(gql, "more.pdf", make_pdf(["More notes."]), viewer)
    assert_error(body, "FORBIDDEN", "VIEWER")
    assert_error(await gql.execute(DELETE, {"id": doc["id"]}, token=viewer), "FORBIDDEN")
    assert_error(await gql.execute(ME, token=viewer), "FORBIDDEN", "API key")
    assert await document_ids(gql, viewer) == {doc["id"]}

    # EDITOR uploads and deletes, but manages no keys.
    more = await upload_ok(gql, "more.pdf", make_pdf(["More notes on walruses."]), editor)
    assert await gql.data(DELETE, {"id": more["id"]}, token=editor) == {"deleteDocument": True}
    assert_error(await gql.execute(LIST, token=editor), "FORBIDDEN", "ADMIN")
    body = await gql.execute(CREATE, {"w": workspace, "n": "x", "r": "VIEWER"}, token=editor)
    assert_error(body, "FORBIDDEN")

    # ADMIN lists and revokes keys, but a key never creates keys, whatever its role.
    listed = (await gql.data(LIST, token=admin))["apiKeys"]
    assert [k["role"] for k in listed] == ["ADMIN", "EDITOR", "VIEWER"]
    for role in ("VIEWER", "ADMIN"):
        body = await gql.execute(CREATE, {"w": workspace, "n": "x", "r": role}, token=admin)
        assert body["data"] is None
        assert_error(body, "FORBIDDEN", "API key cannot create")
    revoked = (await gql.data(REVOKE, {"id": listed[1]["id"]}, token=admin))["revokeApiKey"]
    assert revoked["revokedAt"] is not None
    assert_error(await gql.execute(DOCUMENTS, token=editor), "UNAUTHENTICATED", INVALID)
    async with connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_key") == 3


async def test_users_grant_no_more_than_their_own_role(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    workspace = await workspace_of(settings, "alice@example.com")
    owner_key, owner_listed = await create_key(gql, token, workspace, "OWNER")
    assert owner_listed["role"] == "OWNER"

    await set_role(settings, "alice@example.com", "ADMIN")
    body = await gql.execute(CREATE, {"w": workspace, "n": "x", "r": "OWNER"}, token=token)
    assert_error(body, "FORBIDDEN", "ADMIN", "OWNER")
    _, admin_key = await create_key(gql, token, workspace, "ADMIN")
    assert admin_key["role"] == "ADMIN"

    await set_role(settings, "alice@example.com", "EDITOR")
    for query, variables in (
        (CREATE, {"w": workspace, "n": "x", "r": "VIEWER"}),
        (LIST, {}),
        (REVOKE, {"id": admin_key["id"]}),
    ):
        body = await gql.execute(query, variables, token=token)
        assert body["data"] is None
        assert_error(body, "FORBIDDEN", "EDITOR", "ADMIN")
    async with connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_key WHERE revoked_at IS NULL") == 2
    # The OWNER key made earlier keeps its role: keys belong to the workspace, not the user.
    assert len((await gql.data(LIST, token=owner_key))["apiKeys"]) == 2


async def test_bad_input_is_refused(gql: GraphQLClient, inbox: Inbox, settings: Settings) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    workspace = await workspace_of(settings, "alice@example.com")
    for variables, fragment in (
        ({"e": in_days(-1 / 24)}, "future"),
        ({"e": "2099-01-01T00:00:00"}, "offset"),
        ({"n": "   "}, "name"),
        ({"n": "x" * 201}, "200"),
    ):
        body = await gql.execute(
            CREATE, {"w": workspace, "n": "ok", "r": "VIEWER", **variables}, token=token
        )
        assert body["data"] is None
        assert_error(body, "BAD_USER_INPUT", fragment)
    body = await gql.execute(CREATE, {"w": "nope", "n": "ok", "r": "VIEWER"}, token=token)
    assert_error(body, "NOT_FOUND", "Workspace not found")
    body = await gql.execute(REVOKE, {"id": "nope"}, token=token)
    assert_error(body, "NOT_FOUND", "API key not found")
    assert (await gql.data(LIST, token=token))["apiKeys"] == []


async def test_revoked_expired_and_unknown_keys_are_refused_alike(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    workspace = await workspace_of(settings, "alice@example.com")
    revoked, revoked_key = await create_key(gql, token, workspace, "VIEWER")
    expired, expired_key = await create_key(gql, token, workspace, "VIEWER", expires_at=in_days(1))
    assert await document_ids(gql, revoked) == set()
    assert await document_ids(gql, expired) == set()

    first = (await gql.data(REVOKE, {"id": revoked_key["id"]}, token=token))["revokeApiKey"]
    assert first["id"] == revoked_key["id"] and first["revokedAt"] is not None
    again = (await gql.data(REVOKE, {"id": revoked_key["id"]}, token=token))["revokeApiKey"]
    assert again["revokedAt"] == first["revokedAt"]
    async with connect(settings) as conn:
        await conn.execute(
            "UPDATE api_key SET expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(expired_key["id"]),
        )

    tampered = revoked[:-1] + ("A" if revoked[-1] != "A" else "B")
    unknown = "rgk_0123abcd_" + "x" * 43
    for secret in (revoked, expired, tampered, unknown, "rgk_", "not-a-key"):
        for headers in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}):
            if secret == "not-a-key" and "Authorization" in headers:
                continue  # not a key: read as an access token, tested in test_auth.py
            body = await call(gql, DOCUMENTS, headers=headers)
            assert body["data"] is None
            assert assert_error(body, "UNAUTHENTICATED") == INVALID
    for payload in ({"apiKey": revoked}, {"authorization": f"Bearer {expired}"}, {"apiKey": ""}):
        await assert_ws_rejected(gql, payload)
    # Listed with their state; the user's token still works.
    listed = {k["id"]: k for k in (await gql.data(LIST, token=token))["apiKeys"]}
    assert listed[revoked_key["id"]]["revokedAt"] == first["revokedAt"]
    assert listed[expired_key["id"]]["revokedAt"] is None
    assert datetime.fromisoformat(listed[expired_key["id"]]["expiresAt"]) < datetime.now(UTC)


async def test_last_used_at_is_recorded_at_most_once_a_minute(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    token = await sign_up(gql, inbox, "alice@example.com")
    workspace = await workspace_of(settings, "alice@example.com")
    secret, key = await create_key(gql, token, workspace, "VIEWER")
    key_id = uuid.UUID(key["id"])

    async def last_used() -> datetime | None:
        async with connect(settings) as conn:
            value: datetime | None = await conn.fetchval(
                "SELECT last_used_at FROM api_key WHERE id = $1", key_id
            )
            return value

    assert await last_used() is None
    before = datetime.now(UTC)
    await document_ids(gql, secret)
    first = await last_used()
    assert first is not None and first >= before - timedelta(seconds=1)
    listed = (await gql.data(LIST, token=token))["apiKeys"]
    assert datetime.fromisoformat(listed[0]["lastUsedAt"]) == first

    await document_ids(gql, secret)
    await document_ids(gql, secret)
    assert await last_used() == first  # within the minute: no write

    async with connect(settings) as conn:
        await conn.execute(
            "UPDATE api_key SET last_used_at = now() - interval '2 minutes' WHERE id = $1", key_id
        )
    stale = await last_used()
    await answer_source_ids(gql, {"apiKey": secret}, QUESTION)  # the WebSocket counts too
    latest = await last_used()
    assert stale is not None and latest is not None and latest > stale


async def test_a_key_acts_only_in_its_own_workspace(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState
) -> None:
    token_a = await sign_up(gql, inbox, "alice@example.com")
    token_b = await sign_up(gql, inbox, "bob@example.com")
    ws_a = await workspace_of(settings, "alice@example.com")
    ws_b = await workspace_of(settings, "bob@example.com")
    doc_a = await upload_ok(gql, "nightingale.pdf", make_pdf(PAGES), token_a)
    key_a, listed_a = await create_key(gql, token_a, ws_a, "VIEWER")
    key_b, listed_b = await create_key(gql, token_b, ws_b, "ADMIN")

    # Bob (a user) cannot list, create or revoke Alice's keys: they read as nonexistent.
    unknown_ws = str(uuid.uuid4())
    for query, variables in (
        (LIST, {"w": ws_a}),
        (CREATE, {"w": ws_a, "n": "x", "r": "VIEWER"}),
    ):
        others = await gql.execute(query, variables, token=token_b)
        unknown = await gql.execute(query, {**variables, "w": unknown_ws}, token=token_b)
        assert others["data"] is None
        assert assert_error(others, "NOT_FOUND") == assert_error(unknown, "NOT_FOUND")
    others = await gql.execute(REVOKE, {"id": listed_a["id"]}, token=token_b)
    unknown = await gql.execute(REVOKE, {"id": str(uuid.uuid4())}, token=token_b)
    assert others["data"] is None
    assert assert_error(others, "NOT_FOUND") == assert_error(unknown, "NOT_FOUND")
    assert others["errors"][0]["extensions"] == unknown["errors"][0]["extensions"]
    body = await call(
        gql,
        REVOKE,
        {"id": listed_a["id"]},
        headers={"Authorization": f"Bearer {token_b}", "X-Workspace-Id": ws_a},
    )
    assert_error(body, "NOT_FOUND", "Workspace not found")
    listed = (await gql.data(LIST, token=token_b))["apiKeys"]
    assert [k["id"] for k in listed] == [listed_b["id"]]

    # Nor can Bob's key, though it is an ADMIN key.
    assert_error(await gql.execute(LIST, {"w": ws_a}, token=key_b), "NOT_FOUND")
    assert_error(await gql.execute(REVOKE, {"id": listed_a["id"]}, token=key_b), "NOT_FOUND")
    async with connect(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_key WHERE revoked_at IS NULL") == 2
    assert await document_ids(gql, key_a) == {doc_a["id"]}

    # Bob's key reads none of Alice's documents, by any route.
    assert await document_ids(gql, key_b) == set()
    body = await call(gql, DOCUMENT, {"id": doc_a["id"]}, headers={"X-API-Key": key_b})
    assert_error(body, "NOT_FOUND", "Document not found")
    assert (await gql.data(SEARCH, {"q": QUESTION}, token=key_b))["search"] == []
    assert_error(await gql.execute(DELETE, {"id": doc_a["id"]}, token=key_b), "NOT_FOUND")
    assert await answer_source_ids(gql, {"apiKey": key_b}, QUESTION) == []
    prompt = "\n".join(m["content"] for m in ollama.last_chat_messages)
    assert "amber walrus" not in prompt
    assert await document_ids(gql, key_a) == {doc_a["id"]}

    # Pointing a key at another workspace is "Workspace not found", over HTTP and WebSocket.
    for workspace in (ws_a, unknown_ws, "not-an-id"):
        body = await call(gql, DOCUMENTS, headers={"X-API-Key": key_b, "X-Workspace-Id": workspace})
        assert body["data"] is None
        assert_error(body, "NOT_FOUND", "Workspace not found")
        await assert_ws_rejected(gql, {"apiKey": key_b, "workspaceId": workspace})
    body = await call(gql, DOCUMENTS, headers={"X-API-Key": key_b, "X-Workspace-Id": ws_b})
    assert body["data"] == {"documents": {"edges": []}}, body
    ids = await answer_source_ids(
        gql, {"authorization": f"Bearer {key_a}", "workspaceId": ws_a}, QUESTION
    )
    assert ids == [doc_a["id"]]


async def test_a_removed_members_keys_stop_working(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Removed by an ADMIN, leaving, or their membership gone by any other way (SQL here, as a
    deleted account's cascade would): the member's keys are refused at once, over HTTP and
    WebSocket; the first two also revoke them, which listings show."""
    owner = await sign_up(gql, inbox, "owner@example.com")
    team = (await gql.data(CREATE_TEAM, {"n": "Team"}, token=owner))["createWorkspace"]["id"]
    members = {}
    for name in ("removed", "leaver", "gone"):
        email = f"{name}@example.com"
        members[name] = await sign_up(gql, inbox, email)
        await invite_and_join(gql, inbox, owner, team, email, members[name], "ADMIN")
    keys = {name: await create_key(gql, token, team, "EDITOR") for name, token in members.items()}
    for secret, _ in keys.values():
        assert await document_ids(gql, secret) == set()
    ids = {name: await user_id(gql, token) for name, token in members.items()}

    await gql.data(REMOVE_MEMBER, {"w": team, "u": ids["removed"]}, token=owner)
    await gql.data(REMOVE_MEMBER, {"w": team, "u": ids["leaver"]}, token=members["leaver"])
    async with connect(settings) as conn:
        await conn.execute(
            "DELETE FROM membership WHERE workspace_id = $1 AND user_id = $2",
            uuid.UUID(team),
            uuid.UUID(ids["gone"]),
        )

    for secret, _ in keys.values():
        for headers in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}):
            body = await call(gql, DOCUMENTS, headers=headers)
            assert body["data"] is None
            assert assert_error(body, "UNAUTHENTICATED") == INVALID
        await assert_ws_rejected(gql, {"apiKey": secret})
    listed = {k["id"]: k for k in (await gql.data(LIST, {"w": team}, token=owner))["apiKeys"]}
    assert listed[keys["removed"][1]["id"]]["revokedAt"] is not None
    assert listed[keys["leaver"][1]["id"]]["revokedAt"] is not None
    assert listed[keys["gone"][1]["id"]]["revokedAt"] is None  # refused all the same

    # Back in the workspace, the revoked keys stay revoked; the never-revoked one works again.
    for name in ("removed", "gone"):
        email = f"{name}@example.com"
        await invite_and_join(gql, inbox, owner, team, email, members[name], "ADMIN")
    body = await call(gql, DOCUMENTS, headers={"X-API-Key": keys["removed"][0]})
    assert assert_error(body, "UNAUTHENTICATED") == INVALID
    assert await document_ids(gql, keys["gone"][0]) == set()
