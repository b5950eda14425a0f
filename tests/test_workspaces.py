"""Workspaces, members, roles, invitations and collections, through the API."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
import httpx

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient, Json
from tests.support.pdfs import make_pdf
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error

CREATE = "mutation($n: String!) { createWorkspace(name: $n) { id name personal role } }"
WORKSPACES = "{ workspaces { id name personal role } }"
INVITE = (
    "mutation($w: ID!, $e: String!, $r: Role!) "
    "{ inviteMember(workspaceId: $w, email: $e, role: $r) { id email role expiresAt } }"
)
ACCEPT = "mutation($t: String!) { acceptInvitation(token: $t) { id name role } }"
MEMBERS = "query($w: ID!) { members(workspaceId: $w) { user { id email } role } }"
REMOVE = "mutation($w: ID!, $u: ID!) { removeMember(workspaceId: $w, userId: $u) }"
SET_ROLE = (
    "mutation($w: ID!, $u: ID!, $r: Role!) "
    "{ updateMemberRole(workspaceId: $w, userId: $u, role: $r) { user { email } role } }"
)
DOCUMENTS = "{ documents { edges { node { id filename collectionId } } } }"
SEARCH = (
    "query($q: String!, $c: [ID!]) "
    "{ search(query: $q, k: 5, collectionIds: $c) { page document { id filename } } }"
)
TOKEN = re.compile(r'acceptInvitation\(token: "([^"]+)"\)')


async def invite_and_join(
    gql: GraphQLClient, inbox: Inbox, owner: str, workspace: str, email: str, member: str, role: str
) -> None:
    """`owner` invites `email` with `role`; `member` (logged in as `email`) accepts."""
    before = len(inbox.to(email))
    await gql.data(INVITE, {"w": workspace, "e": email, "r": role}, token=owner)
    body = inbox.to(email)[before].get_payload(decode=True)
    assert isinstance(body, bytes)
    found = TOKEN.search(body.decode())
    assert found
    joined = await gql.data(ACCEPT, {"t": found.group(1)}, token=member)
    assert joined["acceptInvitation"]["id"] == workspace


async def user_id(gql: GraphQLClient, token: str) -> str:
    me: Json = await gql.data("{ me { id } }", token=token)
    return str(me["me"]["id"])


async def test_team_workspace_with_roles(gql: GraphQLClient, inbox: Inbox) -> None:
    owner = await sign_up(gql, inbox, "owner@example.com")
    editor = await sign_up(gql, inbox, "editor@example.com")
    viewer = await sign_up(gql, inbox, "viewer@example.com")
    outsider = await sign_up(gql, inbox, "outsider@example.com")

    personal = (await gql.data(WORKSPACES, token=owner))["workspaces"]
    assert [(w["personal"], w["role"]) for w in personal] == [(True, "OWNER")]
    team = (await gql.data(CREATE, {"n": "  Team   docs "}, token=owner))["createWorkspace"]
    assert (team["name"], team["personal"], team["role"]) == ("Team docs", False, "OWNER")
    ws = team["id"]

    await invite_and_join(gql, inbox, owner, ws, "editor@example.com", editor, "EDITOR")
    await invite_and_join(gql, inbox, owner, ws, "viewer@example.com", viewer, "VIEWER")
    roles = {
        m["user"]["email"]: m["role"]
        for m in (await gql.data(MEMBERS, {"w": ws}, token=viewer))["members"]
    }
    assert roles == {
        "owner@example.com": "OWNER",
        "editor@example.com": "EDITOR",
        "viewer@example.com": "VIEWER",
    }

    # The editor uploads into the team workspace; everyone in it sees the document.
    pdf = make_pdf(["The team handbook says deployments happen on Tuesdays."])
    response = await gql.upload("handbook.pdf", pdf, token=editor, workspace=ws)
    doc = response.json()["data"]["uploadDocument"]
    for token in (owner, viewer):
        docs = await gql.data(DOCUMENTS, token=token, workspace=ws)
        assert [e["node"]["id"] for e in docs["documents"]["edges"]] == [doc["id"]]
    # ... but not in anyone's personal workspace.
    assert (await gql.data(DOCUMENTS, token=editor))["documents"]["edges"] == []

    # The viewer reads and searches, and may not write.
    hits = await gql.data(SEARCH, {"q": "when are deployments?"}, token=viewer, workspace=ws)
    assert hits["search"][0]["document"]["id"] == doc["id"]
    denied = await gql.upload("v.pdf", make_pdf(["viewer text"]), token=viewer, workspace=ws)
    assert_error(denied.json(), "FORBIDDEN", "VIEWER")
    body = await gql.execute(
        "mutation($id: ID!) { deleteDocument(id: $id) }",
        {"id": doc["id"]},
        token=viewer,
        workspace=ws,
    )
    assert_error(body, "FORBIDDEN")
    # An editor cannot manage members; an outsider cannot even see the workspace.
    assert_error(
        await gql.execute(INVITE, {"w": ws, "e": "x@example.com", "r": "VIEWER"}, token=editor),
        "FORBIDDEN",
    )
    unknown = str(uuid.uuid4())
    for workspace in (ws, unknown):
        body = await gql.execute(DOCUMENTS, token=outsider, workspace=workspace)
        assert_error(body, "NOT_FOUND", "Workspace not found")
        body = await gql.execute(MEMBERS, {"w": workspace}, token=outsider)
        assert_error(body, "NOT_FOUND", "Workspace not found")
    assert_error(await gql.execute(DOCUMENTS, token=outsider, workspace="junk"), "NOT_FOUND")

    # Roles: the owner promotes the editor to ADMIN; an ADMIN cannot make an OWNER.
    editor_id, viewer_id, owner_id = (
        await user_id(gql, editor),
        await user_id(gql, viewer),
        await user_id(gql, owner),
    )
    promoted = await gql.data(SET_ROLE, {"w": ws, "u": editor_id, "r": "ADMIN"}, token=owner)
    assert promoted["updateMemberRole"]["role"] == "ADMIN"
    body = await gql.execute(SET_ROLE, {"w": ws, "u": viewer_id, "r": "OWNER"}, token=editor)
    assert_error(body, "FORBIDDEN", "OWNER")
    body = await gql.execute(SET_ROLE, {"w": ws, "u": owner_id, "r": "VIEWER"}, token=editor)
    assert_error(body, "FORBIDDEN")
    # The last OWNER can neither leave nor be demoted.
    assert_error(await gql.execute(REMOVE, {"w": ws, "u": owner_id}, token=owner), "FORBIDDEN")
    body = await gql.execute(SET_ROLE, {"w": ws, "u": owner_id, "r": "ADMIN"}, token=owner)
    assert_error(body, "FORBIDDEN", "OWNER")

    # The admin removes the viewer, who then loses access at once.
    assert (await gql.data(REMOVE, {"w": ws, "u": viewer_id}, token=editor))["removeMember"]
    assert_error(await gql.execute(DOCUMENTS, token=viewer, workspace=ws), "NOT_FOUND")
    # A member leaves on their own.
    assert (await gql.data(REMOVE, {"w": ws, "u": editor_id}, token=editor))["removeMember"]
    assert_error(await gql.execute(DOCUMENTS, token=editor, workspace=ws), "NOT_FOUND")


async def test_invitations_are_single_use_and_personal(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    owner = await sign_up(gql, inbox, "boss@example.com")
    invited = await sign_up(gql, inbox, "invited@example.com")
    other = await sign_up(gql, inbox, "other@example.com")
    ws = (await gql.data(CREATE, {"n": "Shared"}, token=owner))["createWorkspace"]["id"]
    personal = (await gql.data(WORKSPACES, token=owner))["workspaces"][0]["id"]

    # A personal workspace is not shared.
    body = await gql.execute(
        INVITE, {"w": personal, "e": "x@example.com", "r": "VIEWER"}, token=owner
    )
    assert_error(body, "BAD_USER_INPUT", "personal")

    await gql.data(INVITE, {"w": ws, "e": "Invited@Example.com", "r": "EDITOR"}, token=owner)
    text = inbox.to("invited@example.com")[-1].get_payload(decode=True)
    assert isinstance(text, bytes)
    found = TOKEN.search(text.decode())
    assert found
    token = found.group(1)
    # The token is stored hashed.
    async with connect(settings) as conn:
        stored = await conn.fetchval("SELECT token_hash FROM invitation")
    assert token not in stored

    # Someone else holding the token cannot use it; the same answer as a made-up token.
    wrong = await gql.execute(ACCEPT, {"t": token}, token=other)
    made_up = await gql.execute(ACCEPT, {"t": "nope"}, token=other)
    assert assert_error(wrong, "NOT_FOUND") == assert_error(made_up, "NOT_FOUND")
    assert (await gql.data(ACCEPT, {"t": token}, token=invited))["acceptInvitation"][
        "role"
    ] == "EDITOR"
    assert_error(await gql.execute(ACCEPT, {"t": token}, token=invited), "NOT_FOUND")


async def test_collections(gql: GraphQLClient, inbox: Inbox, settings: Settings) -> None:
    alice = await sign_up(gql, inbox, "alice@example.com")
    bob = await sign_up(gql, inbox, "bob@example.com")
    manuals = (
        await gql.data(
            'mutation { createCollection(name: "Manuals") { id name documentCount } }', token=alice
        )
    )["createCollection"]
    recipes = (
        await gql.data('mutation { createCollection(name: "Recipes") { id } }', token=alice)
    )["createCollection"]
    dup = await gql.execute('mutation { createCollection(name: "Manuals") { id } }', token=alice)
    assert_error(dup, "CONFLICT", "Manuals")

    manual = make_pdf(["To reset the router, hold the power button for ten seconds."])
    recipe = make_pdf(["To bake bread, knead the dough for ten minutes and bake it."])
    loose = make_pdf(["Ten reasons to hold the door for someone."])
    m = (await gql.upload("router.pdf", manual, token=alice, collection=manuals["id"])).json()
    r = (await gql.upload("bread.pdf", recipe, token=alice, collection=recipes["id"])).json()
    (await gql.upload("loose.pdf", loose, token=alice)).json()
    assert m["data"]["uploadDocument"]["id"] and r["data"]["uploadDocument"]["id"]
    listed = await gql.data("{ collections { name documentCount } }", token=alice)
    assert listed["collections"] == [
        {"name": "Manuals", "documentCount": 1},
        {"name": "Recipes", "documentCount": 1},
    ]

    everything = await gql.data(SEARCH, {"q": "hold for ten", "c": None}, token=alice)
    assert {h["document"]["filename"] for h in everything["search"]} == {
        "router.pdf",
        "bread.pdf",
        "loose.pdf",
    }
    only = await gql.data(SEARCH, {"q": "hold for ten", "c": [recipes["id"]]}, token=alice)
    assert [h["document"]["filename"] for h in only["search"]] == ["bread.pdf"]
    assert (await gql.data(SEARCH, {"q": "ten", "c": []}, token=alice))["search"] == []

    # Bob can neither upload into, filter by, nor delete Alice's collection.
    body = (
        await gql.upload("b.pdf", make_pdf(["bob"]), token=bob, collection=manuals["id"])
    ).json()
    assert_error(body, "NOT_FOUND", "Collection not found")
    assert (await gql.data(SEARCH, {"q": "router", "c": [manuals["id"]]}, token=bob))[
        "search"
    ] == []
    body = await gql.execute(
        "mutation($id: ID!) { deleteCollection(id: $id) }", {"id": manuals["id"]}, token=bob
    )
    assert_error(body, "NOT_FOUND", "Collection not found")

    # Deleting a collection takes its documents and chunks with it, and nothing else.
    assert (
        await gql.data(
            "mutation($id: ID!) { deleteCollection(id: $id) }", {"id": manuals["id"]}, token=alice
        )
    )["deleteCollection"]
    docs = await gql.data(DOCUMENTS, token=alice)
    assert sorted(e["node"]["filename"] for e in docs["documents"]["edges"]) == [
        "bread.pdf",
        "loose.pdf",
    ]
    async with connect(settings) as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM chunk c JOIN document d ON d.id = c.document_id "
            "WHERE d.filename = 'router.pdf'"
        )
        orphans = await conn.fetchval(
            "SELECT count(*) FROM chunk c LEFT JOIN document d ON d.id = c.document_id "
            "WHERE d.id IS NULL"
        )
    assert (left, orphans) == (0, 0)


async def blocked(watch: asyncpg.Connection, count: int, *, on_user_table: bool = False) -> None:
    """Waits until `count` other sessions of the database wait for a lock that another
    session holds (and, with `on_user_table`, one of them for the `user` table). `watch`
    must not be inside a transaction: the activity it reads is a snapshot per transaction."""
    query = """
        SELECT count(*) FILTER (WHERE cardinality(pg_blocking_pids(a.pid)) > 0),
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted
                   AND l.relation = '"user"'::regclass))
        FROM pg_stat_activity a
        WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
    """
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        waiting, on_user = await watch.fetchrow(query)
        if waiting == count and (on_user > 0 or not on_user_table):
            return
        assert asyncio.get_running_loop().time() < deadline, (waiting, on_user)
        await asyncio.sleep(0.02)


async def demote(base_url: str, token: str, workspace: str, member: str) -> Json:
    """`updateMemberRole(member → ADMIN)` as `token`, on a connection of its own."""
    async with httpx.AsyncClient(timeout=60) as http:
        variables = {"w": workspace, "u": member, "r": "ADMIN"}
        return await GraphQLClient(http, base_url).execute(SET_ROLE, variables, token=token)


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Each demotion passes the last-OWNER check only after the other has committed.

    Made deterministic with locks held from outside: both requests first wait on their
    targets' membership rows; once both do, the `user` table is locked and the rows freed, so
    each runs on until it reads an account (after its own check and update), where it waits
    again; then everything is let go. Without a lock taken before the check, both would pass
    it on two OWNERs and commit: no OWNER left."""
    first = await sign_up(gql, inbox, "first@example.com")
    second = await sign_up(gql, inbox, "second@example.com")
    ws = (await gql.data(CREATE, {"n": "Shared"}, token=first))["createWorkspace"]["id"]
    await invite_and_join(gql, inbox, first, ws, "second@example.com", second, "OWNER")
    first_id, second_id = await user_id(gql, first), await user_id(gql, second)

    async with (
        connect(settings) as rows,
        connect(settings) as table,
        connect(settings) as watch,
    ):
        await rows.execute("BEGIN")
        await rows.execute(
            "SELECT 1 FROM membership WHERE workspace_id = $1 FOR UPDATE", uuid.UUID(ws)
        )
        demotions = [
            asyncio.create_task(demote(gql.base_url, token, ws, target))
            for token, target in ((first, second_id), (second, first_id))
        ]

        await blocked(watch, 2)
        await table.execute("BEGIN")
        await table.execute('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE')
        await rows.execute("COMMIT")
        await blocked(watch, 2, on_user_table=True)
        await table.execute("COMMIT")
        bodies = await asyncio.gather(*demotions)

    done = [b for b in bodies if not b.get("errors")]
    refused = [b for b in bodies if b.get("errors")]
    assert len(done) == 1 and len(refused) == 1, bodies
    assert done[0]["data"]["updateMemberRole"]["role"] == "ADMIN"
    # The loser was demoted first: as an ADMIN it may no longer change an OWNER.
    assert_error(refused[0], "FORBIDDEN", "ADMIN", "OWNER")
    roles = sorted(m["role"] for m in (await gql.data(MEMBERS, {"w": ws}, token=first))["members"])
    assert roles == ["ADMIN", "OWNER"]
