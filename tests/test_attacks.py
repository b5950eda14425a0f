"""The attack suite: every operation of the schema, attacked by every caller without the right.

The `world`: a team workspace T (an OWNER, an ADMIN, an EDITOR, a VIEWER, a spare VIEWER, a
member who joined and was removed), a collection and two documents in T, API keys of T for each
role, a revoked key, an expired access token, a reused refresh token (its family, the rotated
token included, is dead) and an outsider, mallory, with her own workspace M (a document, a
collection, an ADMIN key).

`PROBES` maps every (root type, field) of the schema to a probe. A probe attacks its operation
and asserts that a caller without the right gets FORBIDDEN or NOT_FOUND (UNAUTHENTICATED
without valid credentials), with no `data`, and learns nothing: a NOT_FOUND reads exactly like
the one for random ids (`World.refused` asks both), no error message holds an id, name or text
of T or M, and lists, counts and cursors hold none of the other workspace's rows. Each probe
also has a caller with the right succeed, so it is not vacuous. After every probe, SQL checks
that T and M are intact.

`test_attacks` runs the probes of a group against one world (two groups, to build only two
worlds); `test_every_operation_has_an_attack_probe` walks the schema, so a new operation fails
the suite until it has a probe here. Run with `-s` to print the log of every attack and its
outcome.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from graphql import FieldNode, OperationDefinitionNode, parse
from joserfc import jwt
from joserfc.jwk import OctKey
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from rag_gql.config import Settings
from rag_gql.graphql.schema import schema
from rag_gql.operations import operations_listener
from rag_gql.resources import open_services
from tests.support.accounts import PASSWORD, sign_up
from tests.support.graphql_client import GraphQLClient, Json, init
from tests.support.http_stream import is_stream, open_stream, payloads
from tests.support.ollama_standin import StandinState
from tests.support.pdfs import make_pdf
from tests.support.serving import free_port, serve
from tests.support.smtp import Inbox
from tests.support.sql import connect
from tests.support.uploads import assert_error, upload_ok

Probe = Callable[["World"], Awaitable[None]]

# --- operations ---------------------------------------------------------------------------------

ME = "{ me { id email } }"
DOCUMENT = "query($id: ID!) { document(id: $id) { id filename collectionId } }"
DOCUMENT_OCR = "query($id: ID!) { document(id: $id) { ocrPages } }"
DOCUMENT_FILE_URL = "query($id: ID!) { document(id: $id) { fileUrl } }"
DOCUMENT_META = "query($id: ID!) { document(id: $id) { title author authoredAt metadata } }"
DOCUMENTS_META = (
    "query($m: [MetadataCondition!]) { documents(first: 100, metadata: $m) "
    "{ edges { node { id metadata } } } }"
)
UPDATE_METADATA = (
    "mutation($id: ID!, $m: JSON!) { updateDocumentMetadata(id: $id, metadata: $m) "
    "{ id metadata } }"
)
T_TAG = {"project": "tidal-secret", "level": 7}
"""The metadata the updateDocumentMetadata probe gives T's document for a while."""
DOCUMENTS = (
    "query($first: Int, $after: String) { documents(first: $first, after: $after) "
    "{ edges { cursor node { id filename collectionId } } "
    "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"
)
SEARCH = (
    "query($q: String!, $c: [ID!]) "
    "{ search(query: $q, k: 50, collectionIds: $c) { text page url document { id filename } } }"
)
SEARCH_RERANK = (
    "query($q: String!, $r: Boolean) "
    "{ search(query: $q, k: 50, rerank: $r) { text rerankScore reranked document { id } } }"
)
SEARCH_FILTER = (
    "query($q: String!, $f: SearchFilter) "
    "{ search(query: $q, k: 50, filter: $f) { text document { id filename } } }"
)
WORKSPACES = "{ workspaces { id name personal role } }"
MEMBERS = "query($w: ID!) { members(workspaceId: $w) { user { id email } role } }"
COLLECTIONS = "{ collections { id name documentCount } }"
API_KEYS = "query($w: ID) { apiKeys(workspaceId: $w) { id name role prefix revokedAt } }"
UPLOAD = "mutation($c: ID) { uploadDocument(file: null, collectionId: $c) { id } }"
"""Names the operation in the log; uploads go as multipart requests (`World.upload`)."""
DELETE_DOCUMENT = "mutation($id: ID!) { deleteDocument(id: $id) }"
REINDEX = "mutation($id: ID!) { reindexDocument(id: $id) { id status } }"
DOCUMENT_STATUS = "query($id: ID!) { document(id: $id) { status } }"
DOCUMENT_EVENTS = (
    "subscription($id: ID) { documentEvents(documentId: $id) "
    "{ documentId status pagesTotal pagesDone chunksDone chunkCount error } }"
)
CREATE_WORKSPACE = "mutation($n: String!) { createWorkspace(name: $n) { id name personal role } }"
INVITE = (
    "mutation($w: ID!, $e: String!, $r: Role!) "
    "{ inviteMember(workspaceId: $w, email: $e, role: $r) { id email role } }"
)
ACCEPT = "mutation($t: String!) { acceptInvitation(token: $t) { id name role } }"
REMOVE = "mutation($w: ID!, $u: ID!) { removeMember(workspaceId: $w, userId: $u) }"
SET_ROLE = (
    "mutation($w: ID!, $u: ID!, $r: Role!) "
    "{ updateMemberRole(workspaceId: $w, userId: $u, role: $r) { user { id } role } }"
)
CREATE_COLLECTION = "mutation($n: String!) { createCollection(name: $n) { id name } }"
DELETE_COLLECTION = "mutation($id: ID!) { deleteCollection(id: $id) }"
CREATE_KEY = (
    "mutation($w: ID!, $n: String!, $r: Role!) "
    "{ createApiKey(workspaceId: $w, name: $n, role: $r) { secret apiKey { id role prefix } } }"
)
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"
CHANGE_PASSWORD = (
    "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"
)
REGISTER = "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { email } }"
VERIFY = (
    "mutation($e: String!, $c: String!, $p: String!) "
    "{ verifyEmail(email: $e, code: $c, password: $p) { id } }"
)
SESSION = "accessToken refreshToken"
LOGIN = f"mutation($e: String!, $p: String!) {{ login(email: $e, password: $p) {{ {SESSION} }} }}"
REFRESH = f"mutation($t: String!) {{ refreshToken(token: $t) {{ {SESSION} }} }}"
LOGOUT = "mutation($t: String!) { logout(refreshToken: $t) }"
REQUEST_RESET = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = (
    "mutation($e: String!, $c: String!, $n: String!) "
    "{ resetPassword(email: $e, code: $c, newPassword: $n) }"
)
ANSWER = """
subscription($q: String!, $c: [ID!]) {
  answer(question: $q, k: 50, collectionIds: $c) {
    __typename
    ... on AnswerSources { sources { text document { id filename } } }
    ... on AnswerError { code message }
  }
}
"""
ASK = """
mutation($q: String!, $c: [ID!], $conv: ID) {
  ask(question: $q, k: 50, collectionIds: $c, conversationId: $conv) {
    text conversationId sources { text url document { id filename } }
    citations { documentId url document { id filename } }
    error { code message }
  }
}
"""
CONVERSATIONS = (
    "query($first: Int, $after: String) { conversations(first: $first, after: $after) "
    "{ edges { cursor node { id title } } "
    "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"
)
CONVERSATION = (
    "query($id: ID!) { conversation(id: $id) { id title messages { role content "
    "sources { documentId filename document { id filename } } "
    "citations { documentId document { id filename } } } } }"
)
DELETE_CONVERSATION = "mutation($id: ID!) { deleteConversation(id: $id) }"
INVITATION_TOKEN = re.compile(r'acceptInvitation\(token: "([^"]+)"\)')

# --- the world's contents -----------------------------------------------------------------------

TEAM_NAME = "Zeppelin Works"
COLLECTION_NAME = "Hangar Plans"
SECRET_FILE = "nightingale-ledger.pdf"
LOOSE_FILE = "florin-budget.pdf"
SECRET_PAGES = ["Project Nightingale: the zeppelin hangar combination is amber walrus seventeen."]
LOOSE_PAGES = ["Nightingale budget: forty thousand florins for helium and the mascot."]
QUESTION = "What is the zeppelin hangar combination of Project Nightingale?"
T_QUESTION = "Tell me the walrus code for the Nightingale hangar"
"""What T's callers ask in conversations: its title must not reach mallory."""
M_NAME_FILE = "mallory-notes.pdf"
M_PAGES = ["Mallory's notes: buy a zeppelin model, a hangar map and a combination lock."]
M_COLLECTION = "Mallory Stash"
NEW_PASSWORD = "purple velvet antelope dances"
MEMBERS_OF_T = {"admin": "ADMIN", "editor": "EDITOR", "viewer": "VIEWER", "spare": "VIEWER"}
ROLES = ("VIEWER", "EDITOR", "ADMIN", "OWNER")
# Settings for these tests: the world signs many users up from 127.0.0.1 within a second.
NO_RATE_LIMITS = {
    "rate_limit_auth_per_ip": "10000/minute",
    "rate_limit_auth_per_account": "10000/minute",
}


def email_of(name: str) -> str:
    return f"{name}@attack.example"


@dataclass
class Account:
    """A verified user with a live access token."""

    name: str
    email: str
    token: str
    id: str
    personal: str


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: `token` goes in `Authorization: Bearer` (or `X-API-Key` with `api_key_header`),
    `workspace` in `X-Workspace-Id`. `sees` are the workspaces whose ids the caller may know:
    the ids of any other workspace are "elsewhere", and must read like ids that do not exist."""

    name: str
    token: str | None
    workspace: str | None = None
    sees: frozenset[str] = frozenset()
    api_key_header: bool = False

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.token and self.api_key_header:
            headers["X-API-Key"] = self.token
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.workspace:
            headers["X-Workspace-Id"] = self.workspace
        return headers


@dataclass
class World:
    """Everything the probes attack, and the log of what they tried."""

    gql: GraphQLClient
    inbox: Inbox
    settings: Settings
    ollama: StandinState
    sql: Any
    """An asyncpg connection to the test's database, to check what the API stored."""
    accounts: dict[str, Account]
    team: str
    collection: str
    secret_doc: str
    loose_doc: str
    secret_pdf: bytes
    chunks: dict[str, int]
    keys: dict[str, str]
    key_ids: dict[str, str]
    key_prefixes: dict[str, str]
    revoked_key: str
    revoked_key_id: str
    expired_token: str
    reused_refresh: str
    rotated_refresh: str
    live_refresh: str
    m: str
    m_doc: str
    m_collection: str
    m_key: str
    m_key_id: str
    m_key_prefix: str
    conversations: dict[str, str] = field(default_factory=dict)
    """Caller name → a conversation of theirs (made by `ensure_conversations`)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Known id → a readable name for the log (`T`, `T.doc`, `user:viewer`, ...)."""
    home: dict[str, str] = field(default_factory=dict)
    """Known id → the workspace it belongs to (a user: the workspace that makes them known)."""
    log: list[str] = field(default_factory=list)
    requests: int = 0
    unknown_errors: dict[str, Json] = field(default_factory=dict)
    """The error for a request with random ids, by its shape (see `refused`)."""

    # --- callers --------------------------------------------------------------------------------

    def user(self, name: str, workspace: str | None = None) -> Caller:
        """The account `name`, optionally acting in `workspace` (`X-Workspace-Id`)."""
        account = self.accounts[name]
        if name == "mallory":
            sees = {self.m}
        elif name == "removed":
            sees = {account.personal}
        else:
            sees = {self.team, account.personal}
        return Caller(self._name(name, workspace), account.token, workspace, frozenset(sees), False)

    def key(self, role: str, workspace: str | None = None, *, header: bool = False) -> Caller:
        """T's API key of `role`."""
        name = f"T-{role}-key" + (" (X-API-Key)" if header else "")
        return Caller(
            self._name(name, workspace), self.keys[role], workspace, frozenset({self.team}), header
        )

    def mallory_key(self, workspace: str | None = None) -> Caller:
        """Mallory's ADMIN key of M."""
        return Caller(
            self._name("M-ADMIN-key", workspace), self.m_key, workspace, frozenset({self.m})
        )

    def t_keys(self) -> list[Caller]:
        return [self.key(role) for role in ROLES]

    def unauthenticated(self) -> list[Caller]:
        """Callers without valid credentials: none, a revoked key, an expired token, a reused
        refresh token (all three of the OWNER, who could do anything with good ones)."""
        return [
            Caller("anonymous", None),
            Caller("revoked OWNER key", self.revoked_key),
            Caller("expired OWNER token", self.expired_token),
            Caller("reused refresh token of OWNER", self.reused_refresh),
        ]

    def more_unauthenticated(self) -> list[Caller]:
        """Variants of `unauthenticated`, tried on a few operations: the key as `X-API-Key`,
        the rotated refresh token, a forged token, and each aiming at T (`X-Workspace-Id`)."""
        forged = _sign({"sub": self.accounts["owner"].id}, "wrong-secret-" * 4)
        callers = [
            Caller("revoked OWNER key (X-API-Key)", self.revoked_key, api_key_header=True),
            Caller("rotated refresh token (family revoked)", self.rotated_refresh),
            Caller("forged OWNER token", forged),
        ]
        callers += self.unauthenticated()
        return callers[:3] + [replace(c, name=f"{c.name}@T", workspace=self.team) for c in callers]

    def outsiders(self) -> list[Caller]:
        """Outsiders of T: mallory and her key in M, mallory and the removed member at T."""
        return [
            self.user("mallory"),
            self.mallory_key(),
            self.user("mallory", self.team),
            self.user("removed", self.team),
        ]

    def outsiders_at_t(self) -> list[Caller]:
        """Callers who are not in T, aiming at it with `X-Workspace-Id: T`."""
        return [
            self.user("mallory", self.team),
            self.mallory_key(self.team),
            self.user("removed", self.team),
        ]

    def _name(self, name: str, workspace: str | None) -> str:
        return f"{name}@{self.labels.get(workspace, workspace)}" if workspace else name

    # --- what must never leak -------------------------------------------------------------------

    def t_secrets(self) -> list[str]:
        """Ids, names and text of T and its members: an outsider must see none of them."""
        owner = self.accounts["owner"]
        members = [self.accounts[n] for n in ("owner", *MEMBERS_OF_T)]
        return [
            self.team,
            TEAM_NAME,
            self.collection,
            COLLECTION_NAME,
            self.secret_doc,
            self.loose_doc,
            SECRET_FILE,
            LOOSE_FILE,
            "amber walrus",
            "florins",
            *self.key_ids.values(),
            *self.key_prefixes.values(),
            self.revoked_key_id,
            owner.personal,
            *(a.id for a in members),
            *(a.email for a in members),
            *(c for n, c in self.conversations.items() if n != "mallory"),
            T_QUESTION,
            str(T_TAG["project"]),
        ]

    def m_secrets(self) -> list[str]:
        """Ids, names and text of M: T's callers must see none of them."""
        mallory = self.accounts["mallory"]
        return [
            self.m,
            mallory.id,
            mallory.email,
            self.m_doc,
            self.m_collection,
            M_COLLECTION,
            M_NAME_FILE,
            "Mallory's notes",
            self.m_key_id,
            self.m_key_prefix,
            *(c for n, c in self.conversations.items() if n == "mallory"),
        ]

    def assert_no_leak(self, text: str, secrets: Sequence[str], where: str) -> None:
        leaked = [s for s in secrets if s.lower() in text.lower()]
        assert not leaked, f"{where} leaks {leaked}: {text}"

    # --- requests -------------------------------------------------------------------------------

    async def call(self, caller: Caller, query: str, variables: Mapping[str, Any] | None) -> Json:
        self.requests += 1
        response = await self.gql.http.post(
            f"{self.gql.base_url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            headers=caller.headers(),
        )
        assert response.status_code == 200, response.text
        body: Json = response.json()
        return body

    async def stream(
        self,
        caller: Caller,
        query: str,
        variables: Mapping[str, Any] | None,
        *,
        until: Callable[[Json], bool] | None = None,
        wait: float = 10.0,
    ) -> Json:
        """Runs a subscription over HTTP (the multipart subscription protocol) as `caller`.

        Returns the JSON body of a refusal, or the stream's as one body: `data` the payloads'
        data in order (None when none had any), `errors` all their errors (absent when none).
        Reads until the stream ends, a payload passes `until`, or `wait` seconds pass quietly.
        """
        self.requests += 1
        body: Json = {}
        async with open_stream(self.gql, query, variables, headers=caller.headers()) as response:
            assert response.status_code == 200, response.status_code
            if not is_stream(response):
                body = json.loads(await response.aread())
                return body
            received: list[Json] = []
            stream = payloads(response)
            while True:
                try:
                    async with asyncio.timeout(wait):
                        payload = await anext(stream)
                except (TimeoutError, StopAsyncIteration):
                    break
                received.append(payload)
                if until is not None and until(payload):
                    break
        data = [p["data"] for p in received if p.get("data") is not None]
        body["data"] = data or None
        errors = [e for p in received for e in p.get("errors") or []]
        if errors:
            body["errors"] = errors
        return body

    async def refuse_streamed(
        self,
        callers: Sequence[Caller],
        query: str,
        variables: Mapping[str, Any] | None,
        code: str,
    ) -> None:
        """`refused` for each of `callers`, with the subscription sent over HTTP (`stream`)."""

        async def streamed(caller: Caller, variables: Mapping[str, Any] | None) -> Json:
            return await self.stream(caller, query, variables)

        for caller in callers:
            body = await streamed(caller, variables)
            await self.refused(caller, query, variables, code, body=body, unknown=streamed)

    async def upload(
        self, caller: Caller, filename: str, content: bytes, collection: str | None = None
    ) -> Json:
        self.requests += 1
        operations = {
            "query": "mutation($file: Upload!, $c: ID) "
            "{ uploadDocument(file: $file, collectionId: $c) { id filename duplicate } }",
            "variables": {"file": None, "c": collection},
        }
        response = await self.gql.http.post(
            f"{self.gql.base_url}/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": (filename, content, "application/pdf")},
            headers={**caller.headers(), "Apollo-Require-Preflight": "true"},
        )
        assert response.status_code == 200, response.text
        body: Json = response.json()
        return body

    async def ok(
        self, caller: Caller, query: str, variables: Mapping[str, Any] | None = None
    ) -> Json:
        """Asserts the call succeeds; returns `data`."""
        body = await self.call(caller, query, variables)
        assert not body.get("errors"), (caller.name, body)
        self.note(query, caller, variables, "ok")
        data: Json = body["data"]
        return data

    async def refused(
        self,
        caller: Caller,
        query: str,
        variables: Mapping[str, Any] | None,
        code: str,
        *,
        body: Json | None = None,
        unknown: Callable[[Caller, Mapping[str, Any] | None], Awaitable[Json]] | None = None,
    ) -> str:
        """Asserts `caller` gets `code`, no data, and an error message naming nothing of T or M.

        A NOT_FOUND must equal, message and extensions, the error for the same request with
        every id the caller may not know replaced by a random one (`unknown` sends that
        request, by default as `call`). Returns the message.
        """
        if body is None:
            body = await self.call(caller, query, variables)
        assert body.get("data") is None, (caller.name, variables, body)
        errors = body.get("errors") or [{}]
        assert errors[0].get("extensions", {}).get("code") == code, (caller.name, variables, body)
        message = assert_error(body, code)
        self.assert_no_leak(message, self.t_secrets() + self.m_secrets(), caller.name)
        outcome = f"{code} {message!r}"
        if code == "NOT_FOUND":
            mapping: dict[str, str] = {}
            blind_variables = self.blind(variables, caller, mapping)
            blind_workspace = self.blind(caller.workspace, caller, mapping)
            if mapping:
                # Any random id reads like any other: one request per shape suffices.
                randoms = set(mapping.values())
                shape = json.dumps(
                    [query, caller.token, caller.api_key_header]
                    + [_masked(x, randoms) for x in (blind_variables, blind_workspace)]
                )
                if shape not in self.unknown_errors:
                    blind_caller = replace(caller, workspace=blind_workspace)
                    send = unknown or (lambda c, v: self.call(c, query, v))
                    other = await send(blind_caller, blind_variables)
                    assert other.get("data") is None, other
                    self.unknown_errors[shape] = other["errors"][0]
                other_error = self.unknown_errors[shape]
                assert other_error["message"] == message, (caller.name, body, other_error)
                assert other_error["extensions"] == errors[0]["extensions"]
                outcome += ", the same as for a random id"
        self.note(query, caller, variables, outcome)
        return message

    def blind(self, value: Any, caller: Caller, mapping: dict[str, str]) -> Any:
        """`value` with each id from a workspace `caller` does not see made random."""
        if isinstance(value, str):
            home = self.home.get(value)
            if home is not None and home not in caller.sees:
                return mapping.setdefault(value, str(uuid.uuid4()))
            return value
        if isinstance(value, Mapping):
            return {k: self.blind(v, caller, mapping) for k, v in value.items()}
        if isinstance(value, list):
            return [self.blind(v, caller, mapping) for v in value]
        return value

    async def refuse_all(
        self,
        callers: Sequence[Caller],
        query: str,
        variables: Mapping[str, Any] | None,
        code: str,
    ) -> None:
        """`refused` for each of `callers`, concurrently."""
        await self.refuse_each([(c, variables) for c in callers], query, code)

    async def refuse_each(
        self,
        attempts: Sequence[tuple[Caller, Mapping[str, Any] | None]],
        query: str,
        code: str,
    ) -> None:
        """`refused` for each (caller, variables) of `attempts`, concurrently."""
        await asyncio.gather(*(self.refused(c, query, v, code) for c, v in attempts))

    async def unauthenticated_everywhere(
        self, query: str, variables: Mapping[str, Any] | None = None, *, more: bool = False
    ) -> None:
        """Every caller without valid credentials gets UNAUTHENTICATED (`more`: and the
        variants of `more_unauthenticated`)."""
        callers = self.unauthenticated() + (self.more_unauthenticated() if more else [])
        await self.refuse_all(callers, query, variables, "UNAUTHENTICATED")

    def note(
        self, query: str, caller: Caller, variables: Mapping[str, Any] | None, outcome: str
    ) -> None:
        args = ", ".join(f"{k}={self.describe(v)}" for k, v in (variables or {}).items())
        self.log.append(f"{operation_of(query)}({args}) as {caller.name}: {outcome}")

    def describe(self, value: Any) -> str:
        if isinstance(value, str):
            if value in self.labels:
                return self.labels[value]
            return repr(value if len(value) <= 24 else value[:21] + "...")
        if isinstance(value, list):
            return "[" + ", ".join(self.describe(v) for v in value) + "]"
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k}: {self.describe(v)}" for k, v in value.items()) + "}"
        return repr(value)


def _masked(value: Any, randoms: set[str]) -> Any:
    """`value` with each of `randoms` replaced by one placeholder."""
    if isinstance(value, str):
        return "<random>" if value in randoms else value
    if isinstance(value, Mapping):
        return {k: _masked(v, randoms) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, randoms) for v in value]
    return value


def operation_of(query: str) -> str:
    """The root field a request selects (its first one)."""
    definition = parse(query).definitions[0]
    assert isinstance(definition, OperationDefinitionNode)
    selection = definition.selection_set.selections[0]
    assert isinstance(selection, FieldNode)
    return selection.name.value


def _sign(claims: dict[str, Any], secret: str) -> str:
    now = int(time.time())
    full = {"iat": now, "exp": now + 600, **claims}
    token: str = jwt.encode({"alg": "HS256"}, full, OctKey.import_key(secret))
    return token


def decode_cursor(cursor: str) -> tuple[str, str]:
    created, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    return created, ident


# --- building the world -------------------------------------------------------------------------


async def _account(gql: GraphQLClient, inbox: Inbox, name: str) -> Account:
    email = email_of(name)
    token = await sign_up(gql, inbox, email)
    data = await gql.data("{ me { id } workspaces { id personal } }", token=token)
    (personal,) = [w["id"] for w in data["workspaces"] if w["personal"]]
    return Account(name, email, token, data["me"]["id"], personal)


async def _invite_and_join(
    gql: GraphQLClient, inbox: Inbox, by: str, workspace: str, member: Account, role: str
) -> None:
    before = len(inbox.to(member.email))
    await gql.data(INVITE, {"w": workspace, "e": member.email, "r": role}, token=by)
    token = invitation_token(inbox, member.email, before)
    joined = await gql.data(ACCEPT, {"t": token}, token=member.token)
    assert joined["acceptInvitation"]["id"] == workspace


def invitation_token(inbox: Inbox, email: str, index: int) -> str:
    body = inbox.to(email)[index].get_payload(decode=True)
    assert isinstance(body, bytes)
    found = INVITATION_TOKEN.search(body.decode())
    assert found, body
    return found.group(1)


async def _upload(
    gql: GraphQLClient, token: str, filename: str, pdf: bytes, workspace: str, collection: str
) -> Json:
    response = await gql.upload(
        filename,
        pdf,
        token=token,
        workspace=workspace,
        collection=collection or None,
        fields="id chunkCount",
    )
    body = response.json()
    assert not body.get("errors"), body
    document: Json = body["data"]["uploadDocument"]
    return document


async def _create_key(gql: GraphQLClient, token: str, workspace: str, role: str) -> Json:
    data = await gql.data(
        CREATE_KEY, {"w": workspace, "n": f"{role.lower()} service", "r": role}, token=token
    )
    created: Json = data["createApiKey"]
    return created


async def build_world(
    gql: GraphQLClient, inbox: Inbox, settings: Settings, ollama: StandinState, sql: Any
) -> World:
    """Builds T and M through the API (`sql`: an asyncpg connection to the test's database)."""
    names = ("owner", *MEMBERS_OF_T, "removed", "mallory")
    accounts = {a.name: a for a in await asyncio.gather(*(_account(gql, inbox, n) for n in names))}
    owner, mallory = accounts["owner"], accounts["mallory"]
    team = (await gql.data(CREATE_WORKSPACE, {"n": TEAM_NAME}, token=owner.token))[
        "createWorkspace"
    ]["id"]
    joining = {**MEMBERS_OF_T, "removed": "EDITOR"}
    await asyncio.gather(
        *(
            _invite_and_join(gql, inbox, owner.token, team, accounts[n], role)
            for n, role in joining.items()
        )
    )
    await gql.data(REMOVE, {"w": team, "u": accounts["removed"].id}, token=owner.token)

    collection = (
        await gql.data(CREATE_COLLECTION, {"n": COLLECTION_NAME}, token=owner.token, workspace=team)
    )["createCollection"]["id"]
    m_collection = (await gql.data(CREATE_COLLECTION, {"n": M_COLLECTION}, token=mallory.token))[
        "createCollection"
    ]["id"]
    secret_pdf = make_pdf(SECRET_PAGES)
    editor = accounts["editor"].token
    secret, loose, m_doc = await asyncio.gather(
        _upload(gql, editor, SECRET_FILE, secret_pdf, team, collection),
        _upload(gql, editor, LOOSE_FILE, make_pdf(LOOSE_PAGES), team, ""),
        _upload(gql, mallory.token, M_NAME_FILE, make_pdf(M_PAGES), mallory.personal, m_collection),
    )

    created = await asyncio.gather(
        *(_create_key(gql, owner.token, team, role) for role in (*ROLES, "OWNER")),
        _create_key(gql, mallory.token, mallory.personal, "ADMIN"),
    )
    keys = {role: c["secret"] for role, c in zip(ROLES, created, strict=False)}
    key_ids = {role: c["apiKey"]["id"] for role, c in zip(ROLES, created, strict=False)}
    prefixes = {role: c["apiKey"]["prefix"] for role, c in zip(ROLES, created, strict=False)}
    revoked, m_key = created[4], created[5]
    await gql.data(REVOKE_KEY, {"id": revoked["apiKey"]["id"]}, token=owner.token, workspace=team)

    # An expired access token of the OWNER, signed with the server's own secret.
    version = await sql.fetchval(
        'SELECT token_version FROM "user" WHERE id = $1', uuid.UUID(owner.id)
    )
    assert settings.jwt_secret is not None
    now = int(time.time())
    expired = _sign(
        {"sub": owner.id, "iat": now - 7200, "exp": now - 3600, "ver": version},
        settings.jwt_secret.get_secret_value(),
    )
    # A reused refresh token: log in, refresh once, present the first token again.
    first = (await gql.data(LOGIN, {"e": owner.email, "p": PASSWORD}))["login"]
    rotated = (await gql.data(REFRESH, {"t": first["refreshToken"]}))["refreshToken"]
    reuse = await gql.execute(REFRESH, {"t": first["refreshToken"]})
    assert_error(reuse, "UNAUTHENTICATED")
    live = (await gql.data(LOGIN, {"e": owner.email, "p": PASSWORD}))["login"]

    world = World(
        gql=gql,
        inbox=inbox,
        settings=settings,
        ollama=ollama,
        sql=sql,
        accounts=accounts,
        team=team,
        collection=collection,
        secret_doc=secret["id"],
        loose_doc=loose["id"],
        secret_pdf=secret_pdf,
        chunks={d["id"]: d["chunkCount"] for d in (secret, loose, m_doc)},
        keys=keys,
        key_ids=key_ids,
        key_prefixes=prefixes,
        revoked_key=revoked["secret"],
        revoked_key_id=revoked["apiKey"]["id"],
        expired_token=expired,
        reused_refresh=first["refreshToken"],
        rotated_refresh=rotated["refreshToken"],
        live_refresh=live["refreshToken"],
        m=mallory.personal,
        m_doc=m_doc["id"],
        m_collection=m_collection,
        m_key=m_key["secret"],
        m_key_id=m_key["apiKey"]["id"],
        m_key_prefix=m_key["apiKey"]["prefix"],
    )
    t_ids = {
        team: "T",
        collection: "T.collection",
        world.secret_doc: "T.doc",
        world.loose_doc: "T.doc2",
        world.revoked_key_id: "T.revokedKey",
        **{key_id: f"T.{role}Key" for role, key_id in key_ids.items()},
        **{accounts[n].id: f"user:{n}" for n in ("owner", *MEMBERS_OF_T)},
    }
    m_ids = {
        world.m: "M",
        mallory.id: "user:mallory",
        world.m_doc: "M.doc",
        m_collection: "M.collection",
        world.m_key_id: "M.ADMINKey",
    }
    world.labels = {**t_ids, **m_ids, accounts["removed"].id: "user:removed"}
    world.labels |= {  # credentials, for the log only
        world.reused_refresh: "reused refresh token",
        world.rotated_refresh: "rotated refresh token",
        world.expired_token: "expired OWNER token",
        owner.token: "OWNER's access token",
        keys["OWNER"]: "T's OWNER key",
    }
    world.home = {**{i: team for i in t_ids}, **{i: world.m for i in m_ids}}
    world.home[accounts["removed"].id] = accounts["removed"].personal
    return world


async def assert_intact(w: World) -> None:
    """T and M are as the world built them (probes clean up what their legit calls make)."""
    conn = w.sql
    docs = {
        str(r["id"]): (str(r["workspace_id"]), r["chunks"])
        for r in await conn.fetch(
            "SELECT d.id, d.workspace_id, (SELECT count(*) FROM chunk c "
            "WHERE c.document_id = d.id) AS chunks FROM document d"
            # Deleted while its ingestion held it: gone for every reader, its worker removes it.
            " WHERE d.delete_requested_at IS NULL"
        )
    }
    collections = {
        str(r["id"]): (str(r["workspace_id"]), r["name"])
        for r in await conn.fetch("SELECT id, workspace_id, name FROM collection")
    }
    roles = {
        str(r["user_id"]): r["role"]
        for r in await conn.fetch(
            "SELECT user_id, role FROM membership WHERE workspace_id = $1", uuid.UUID(w.team)
        )
    }
    keys = {
        str(r["id"]): r["revoked"]
        for r in await conn.fetch("SELECT id, revoked_at IS NOT NULL AS revoked FROM api_key")
    }
    assert docs == {
        w.secret_doc: (w.team, w.chunks[w.secret_doc]),
        w.loose_doc: (w.team, w.chunks[w.loose_doc]),
        w.m_doc: (w.m, w.chunks[w.m_doc]),
    }
    assert collections == {
        w.collection: (w.team, COLLECTION_NAME),
        w.m_collection: (w.m, M_COLLECTION),
    }
    expected = {w.accounts["owner"].id: "OWNER"}
    expected |= {w.accounts[n].id: role for n, role in MEMBERS_OF_T.items()}
    if roles.get(w.accounts["spare"].id) is None:  # the removeMember probe's legit removal
        del expected[w.accounts["spare"].id]
    assert roles == expected
    for key_id in (*w.key_ids.values(), w.m_key_id):
        assert keys.pop(key_id) is False, key_id
    assert keys.pop(w.revoked_key_id) is True
    assert all(keys.values()), f"a probe left a live key: {keys}"


# --- probes -------------------------------------------------------------------------------------

PROBES: dict[tuple[str, str], Probe] = {}
GROUP: dict[tuple[str, str], str] = {}
"""Which test runs each probe (probes of one group share one world, in this file's order)."""
PUBLIC: set[tuple[str, str]] = set()
"""Operations that take no credentials: they act on no workspace."""


def probe(root: str, name: str, group: str, *, public: bool = False) -> Callable[[Probe], Probe]:
    def register(function: Probe) -> Probe:
        PROBES[(root, name)] = function
        GROUP[(root, name)] = group
        if public:
            PUBLIC.add((root, name))
        return function

    return register


def as_text(body: Json) -> str:
    return json.dumps(body)


# --- documents, search ----------------------------------------------------------------------


@probe("Query", "document", "data")
async def attack_document(w: World) -> None:
    await w.unauthenticated_everywhere(DOCUMENT, {"id": w.secret_doc}, more=True)
    for caller in (w.user("viewer", w.team), w.user("owner", w.team), w.key("VIEWER")):
        data = await w.ok(caller, DOCUMENT, {"id": w.secret_doc})
        assert data["document"] == {
            "id": w.secret_doc,
            "filename": SECRET_FILE,
            "collectionId": w.collection,
        }
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed"), *w.outsiders_at_t()]
    await w.refuse_all(outsiders, DOCUMENT, {"id": w.secret_doc}, "NOT_FOUND")
    # `ocrPages` (issue 18): T's text document read no page by OCR; outsiders learn nothing.
    data = await w.ok(w.key("VIEWER"), DOCUMENT_OCR, {"id": w.secret_doc})
    assert data["document"] == {"ocrPages": 0}, data
    await w.refuse_all(outsiders, DOCUMENT_OCR, {"id": w.secret_doc}, "NOT_FOUND")
    # The file's properties and the user's metadata (issue 18): the same, for T only.
    data = await w.ok(w.key("VIEWER"), DOCUMENT_META, {"id": w.secret_doc})
    assert data["document"]["metadata"] == {}, data
    await w.refuse_all(outsiders, DOCUMENT_META, {"id": w.secret_doc}, "NOT_FOUND")
    # T's callers cannot read M's document; nor can a member without X-Workspace-Id: T.
    await w.refuse_all(
        [w.user("owner", w.team), w.key("OWNER")], DOCUMENT, {"id": w.m_doc}, "NOT_FOUND"
    )
    await w.refused(w.user("owner"), DOCUMENT, {"id": w.secret_doc}, "NOT_FOUND")
    await w.refused(w.user("mallory"), DOCUMENT, {"id": "not-an-id"}, "NOT_FOUND")
    # `fileUrl` (issue 18): the path of the file route, for T's callers only.
    data = await w.ok(w.key("VIEWER"), DOCUMENT_FILE_URL, {"id": w.secret_doc})
    assert data["document"] == {"fileUrl": f"/documents/{w.secret_doc}/file"}, data
    await w.refuse_all(outsiders, DOCUMENT_FILE_URL, {"id": w.secret_doc}, "NOT_FOUND")
    await attack_document_file(w)


FILE_ROUTE = "GET /documents/{id}/file"


async def get_file(w: World, caller: Caller, path: str, **headers: str) -> httpx.Response:
    """`GET path` on the served app as `caller`; `path` is sent as it is (no dot segments
    removed, nothing re-encoded)."""
    w.requests += 1
    url = httpx.URL(w.gql.base_url).copy_with(raw_path=path.encode())
    return await w.gql.http.get(url, headers={**caller.headers(), **headers})


async def file_refused(
    w: World, caller: Caller, document_id: str, status: int, code: str, path: str | None = None
) -> None:
    """`caller` gets `status` with the JSON error `code`, no byte of any file, and nothing of
    T or M; a 404 reads exactly like the one for a random id."""
    path = path or f"/documents/{document_id}/file"
    response = await get_file(w, caller, path)
    assert response.status_code == status, (caller.name, path, response.status_code)
    assert b"%PDF" not in response.content, (caller.name, path)
    assert response.headers["content-type"] == "application/json", (caller.name, path)
    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == code, (caller.name, path, body)
    w.assert_no_leak(response.text, w.t_secrets() + w.m_secrets(), caller.name)
    w.assert_no_leak(str(response.headers), w.t_secrets() + w.m_secrets(), caller.name)
    outcome = f"{status} {code}"
    if status == 404:
        random = await get_file(w, caller, f"/documents/{uuid.uuid4()}/file")
        assert random.status_code == 404
        assert random.content == response.content, (caller.name, path)
        outcome += ", the same as for a random id"
    shown = path.replace(document_id, w.describe(document_id))
    w.log.append(f"{FILE_ROUTE} {shown} as {caller.name}: {outcome}")


async def attack_document_file(w: World) -> None:
    """The file route (issue 18): the /graphql credentials, the workspace's documents only,
    another workspace's id by id or by a guessed path read like a random id."""
    doc = w.secret_doc
    callers = w.unauthenticated() + w.more_unauthenticated()
    await asyncio.gather(*(file_refused(w, c, doc, 401, "UNAUTHENTICATED") for c in callers))
    for caller in (
        w.user("viewer", w.team),
        w.user("owner", w.team),
        w.key("VIEWER"),
        w.key("VIEWER", header=True),
    ):
        response = await get_file(w, caller, f"/documents/{doc}/file")
        assert response.status_code == 200, (caller.name, response.text)
        assert response.content == w.secret_pdf
        assert response.headers["content-disposition"] == f'inline; filename="{SECRET_FILE}"'
        ranged = await get_file(w, caller, f"/documents/{doc}/file", Range="bytes=0-4")
        assert ranged.status_code == 206 and ranged.content == b"%PDF-"
        w.log.append(f"{FILE_ROUTE} T.doc as {caller.name}: 200, 206 for a range")
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed"), *w.outsiders_at_t()]
    await asyncio.gather(*(file_refused(w, c, doc, 404, "NOT_FOUND") for c in outsiders))
    # T's callers cannot read M's file; nor a member without X-Workspace-Id: T.
    for caller in (w.user("owner", w.team), w.key("OWNER")):
        await file_refused(w, caller, w.m_doc, 404, "NOT_FOUND")
    await file_refused(w, w.user("owner"), doc, 404, "NOT_FOUND")
    # Guessed paths: dot segments, encoded separators, a non-id, T's id in other spellings.
    mallory = w.user("mallory")
    for path in (
        f"/documents/{doc}/file/..",
        "/documents/../file",
        f"/documents/%2e%2e%2f{doc}/file",
        f"/documents/..%2F{doc}/file",
        f"/documents/{doc}%00/file",
        f"/documents/{doc.upper()}/file",
        f"/documents/{{{doc}}}/file",
        f"/documents/{doc.replace('-', '')}/file",
        f"/documents/urn:uuid:{doc}/file",
        "/documents/not-an-id/file",
    ):
        response = await get_file(w, mallory, path)
        assert response.status_code == 404, (path, response.status_code)
        assert b"%PDF" not in response.content, path
        w.assert_no_leak(response.text, w.t_secrets(), f"mallory at {path}")
        w.log.append(f"{FILE_ROUTE} {path.replace(doc, 'T.doc')} as mallory: 404")


@probe("Query", "documents", "data")
async def attack_documents(w: World) -> None:
    await w.unauthenticated_everywhere(DOCUMENTS, {"first": 1})
    # The legit pages: T's two documents, one per page; keep their cursors for mallory.
    t_cursors: list[str] = []
    after: str | None = None
    seen: list[str] = []
    for _ in range(2):
        page = (await w.ok(w.user("viewer", w.team), DOCUMENTS, {"first": 1, "after": after}))[
            "documents"
        ]
        seen += [e["node"]["id"] for e in page["edges"]]
        t_cursors += [e["cursor"] for e in page["edges"]] + [page["pageInfo"]["endCursor"]]
        after = page["pageInfo"]["endCursor"]
    assert sorted(seen) == sorted([w.secret_doc, w.loose_doc])
    assert not page["pageInfo"]["hasNextPage"]
    listed = (await w.ok(w.key("VIEWER"), DOCUMENTS, {"first": 100}))["documents"]
    assert {e["node"]["id"] for e in listed["edges"]} == {w.secret_doc, w.loose_doc}

    # Mallory's listing: hers only, counts and cursors included, whatever cursor she sends.
    now = "9999-12-31T23:59:59+00:00"
    crafted = [
        base64.urlsafe_b64encode(f"{now}|{doc}".encode()).decode()
        for doc in (w.secret_doc, w.loose_doc)
    ]
    for caller in (w.user("mallory"), w.mallory_key()):
        for after in (None, *t_cursors, *crafted):
            data = await w.ok(caller, DOCUMENTS, {"first": 1, "after": after})
            w.assert_no_leak(as_text(data), w.t_secrets(), caller.name)
            page = data["documents"]
            assert {e["node"]["id"] for e in page["edges"]} <= {w.m_doc}
            assert page["pageInfo"]["hasNextPage"] is False
            for cursor in [e["cursor"] for e in page["edges"]]:
                assert decode_cursor(cursor)[1] == w.m_doc
            for end in ("startCursor", "endCursor"):
                if page["pageInfo"][end] is not None:
                    assert decode_cursor(page["pageInfo"][end])[1] == w.m_doc
            # T's documents never count: M has one, which precedes exactly an empty page.
            assert page["pageInfo"]["hasPreviousPage"] is (not page["edges"]), (after, page)
        first_page = (await w.ok(caller, DOCUMENTS, {"first": 100}))["documents"]
        assert [e["node"]["id"] for e in first_page["edges"]] == [w.m_doc]
    removed = (await w.ok(w.user("removed"), DOCUMENTS, {"first": 100}))["documents"]
    assert removed == {
        "edges": [],
        "pageInfo": {
            "hasNextPage": False,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
    }
    await w.refuse_all(w.outsiders_at_t(), DOCUMENTS, {"first": 100}, "NOT_FOUND")
    # T's callers handed M's cursor see T's documents only.
    m_cursor = (await w.ok(w.user("mallory"), DOCUMENTS, {"first": 1}))["documents"]["edges"][0][
        "cursor"
    ]
    data = await w.ok(w.key("VIEWER"), DOCUMENTS, {"first": 100, "after": m_cursor})
    w.assert_no_leak(as_text(data), w.m_secrets(), "T-VIEWER-key")


@probe("Query", "search", "data")
async def attack_search(w: World) -> None:
    variables: dict[str, Any] = {"q": QUESTION, "c": None}
    await w.unauthenticated_everywhere(SEARCH, variables)
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        hits = (await w.ok(caller, SEARCH, variables))["search"]
        assert {h["document"]["id"] for h in hits} == {w.secret_doc, w.loose_doc}
        # `url` (issue 18): each hit's own document's file, at its page.
        for hit in hits:
            assert hit["url"] == f"/documents/{hit['document']['id']}/file#page={hit['page']}"
        only = (await w.ok(caller, SEARCH, {**variables, "c": [w.collection]}))["search"]
        assert {h["document"]["id"] for h in only} == {w.secret_doc}
        # M's collection filters T's search down to nothing.
        assert (await w.ok(caller, SEARCH, {**variables, "c": [w.m_collection]}))["search"] == []
    for caller in (w.user("mallory"), w.mallory_key()):
        for collections in (None, [w.collection], [w.collection, w.m_collection]):
            data = await w.ok(caller, SEARCH, {"q": QUESTION, "c": collections})
            w.assert_no_leak(as_text(data), w.t_secrets(), caller.name)
            expected = set() if collections == [w.collection] else {w.m_doc}
            assert {h["document"]["id"] for h in data["search"]} == expected
        # T's exact words find nothing of T either.
        data = await w.ok(caller, SEARCH, {"q": SECRET_PAGES[0], "c": None})
        w.assert_no_leak(as_text(data), w.t_secrets(), caller.name)
    assert (await w.ok(w.user("removed"), SEARCH, variables))["search"] == []
    await w.refuse_all(w.outsiders_at_t(), SEARCH, variables, "NOT_FOUND")
    search = schema._schema.query_type.fields["search"] if schema._schema.query_type else None
    if search is not None and "filter" in search.args:
        # The richer filter (documents, filenames) cannot reach into T either.
        for f in (
            {"documentIds": [w.secret_doc, w.loose_doc]},
            {"collectionIds": [w.collection]},
            {"filenames": [SECRET_FILE, LOOSE_FILE]},
        ):
            data = await w.ok(w.user("mallory"), SEARCH_FILTER, {"q": QUESTION, "f": f})
            assert data["search"] == [], data
    # No reranker here (RERANK_URL): asking for one is BAD_USER_INPUT, after authentication
    # and membership; null and false search plainly, nothing reranked.
    await w.unauthenticated_everywhere(SEARCH_RERANK, {"q": QUESTION, "r": True})
    await w.refuse_all(w.outsiders_at_t(), SEARCH_RERANK, {"q": QUESTION, "r": True}, "NOT_FOUND")
    for caller in (w.user("viewer", w.team), w.user("mallory")):
        await w.refused(caller, SEARCH_RERANK, {"q": QUESTION, "r": True}, "BAD_USER_INPUT")
        for rerank in (None, False):
            hits = (await w.ok(caller, SEARCH_RERANK, {"q": QUESTION, "r": rerank}))["search"]
            assert hits and all(h["reranked"] is False for h in hits), hits
            assert all(h["rerankScore"] is None for h in hits), hits
    assert w.ollama.rerank_requests == 0


@probe("Mutation", "uploadDocument", "data")
async def attack_upload(w: World) -> None:
    pdf = make_pdf(["A harmless page about kites."])

    async def refused(caller: Caller, code: str, collection: str | None = None) -> None:
        body = await w.upload(caller, "kites.pdf", pdf, collection)

        async def unknown(c: Caller, v: Mapping[str, Any] | None) -> Json:
            assert v is not None
            return await w.upload(c, "kites.pdf", pdf, v["c"])

        await w.refused(caller, UPLOAD, {"c": collection}, code, body=body, unknown=unknown)

    for caller in w.unauthenticated():
        await refused(caller, "UNAUTHENTICATED")
    for caller in (w.user("viewer", w.team), w.key("VIEWER"), w.key("VIEWER", header=True)):
        await refused(caller, "FORBIDDEN")
        await refused(caller, "FORBIDDEN", w.collection)
    for caller in w.outsiders_at_t():
        await refused(caller, "NOT_FOUND")
    # Into another workspace's collection: "Collection not found", as for a made-up id.
    for caller in (w.user("mallory"), w.mallory_key()):
        await refused(caller, "NOT_FOUND", w.collection)
    for caller in (w.user("editor", w.team), w.key("EDITOR")):
        await refused(caller, "NOT_FOUND", w.m_collection)
    # T's very bytes make mallory her own copy: no duplicate of T's document.
    body = await w.upload(w.user("mallory"), "copy.pdf", w.secret_pdf)
    copy = body["data"]["uploadDocument"]
    assert copy["duplicate"] is False and copy["id"] != w.secret_doc, body
    w.note(UPLOAD, w.user("mallory"), {"file": "T's exact bytes"}, "ok: her own new copy")
    await w.ok(w.user("mallory"), DELETE_DOCUMENT, {"id": copy["id"]})
    # The legit uploads.
    for caller in (w.user("editor", w.team), w.key("EDITOR")):
        body = await w.upload(caller, "kites.pdf", pdf, w.collection)
        assert not body.get("errors"), body
        document = body["data"]["uploadDocument"]
        w.note(UPLOAD, caller, {"c": w.collection}, "ok")
        await w.ok(caller, DELETE_DOCUMENT, {"id": document["id"]})


@probe("Mutation", "updateDocumentMetadata", "data")
async def attack_update_document_metadata(w: World) -> None:
    meta = {"id": w.secret_doc, "m": {"owned": "mallory"}}
    await w.unauthenticated_everywhere(UPDATE_METADATA, meta, more=True)
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        # FORBIDDEN whether or not the id exists: a VIEWER learns nothing from it.
        for doc in (w.secret_doc, str(uuid.uuid4()), w.m_doc):
            await w.refused(caller, UPDATE_METADATA, {**meta, "id": doc}, "FORBIDDEN")
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed"), *w.outsiders_at_t()]
    await w.refuse_all(outsiders, UPDATE_METADATA, meta, "NOT_FOUND")
    await w.refuse_all(
        [w.user("editor", w.team), w.key("EDITOR")],
        UPDATE_METADATA,
        {"id": w.m_doc, "m": T_TAG},
        "NOT_FOUND",
    )
    # The legit update; then T's tag filters nothing of T in for M's callers, by search or
    # listing, whichever operator they try.
    data = await w.ok(w.key("EDITOR"), UPDATE_METADATA, {"id": w.secret_doc, "m": T_TAG})
    assert data["updateDocumentMetadata"] == {"id": w.secret_doc, "metadata": T_TAG}
    conditions: list[list[Json]] = [
        [{"key": "project", "eq": "tidal-secret"}],
        [{"key": "project", "exists": True}],
        [{"key": "level", "gte": 0}],
        [{"key": "project", "in": ["tidal-secret", "x"]}],
    ]
    for caller in (w.user("mallory"), w.mallory_key()):
        for condition in conditions:
            found = await w.ok(caller, SEARCH_FILTER, {"q": QUESTION, "f": {"metadata": condition}})
            assert found["search"] == [], found
            listed = (await w.ok(caller, DOCUMENTS_META, {"m": condition}))["documents"]
            assert listed["edges"] == [], listed
    await w.refuse_all(w.outsiders_at_t(), DOCUMENTS_META, {"m": conditions[0]}, "NOT_FOUND")
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        found = await w.ok(caller, SEARCH_FILTER, {"q": QUESTION, "f": {"metadata": conditions[0]}})
        assert {h["document"]["id"] for h in found["search"]} == {w.secret_doc}, found
        listed = (await w.ok(caller, DOCUMENTS_META, {"m": conditions[2]}))["documents"]
        assert [e["node"]["id"] for e in listed["edges"]] == [w.secret_doc], listed
    # A bad shape from an outsider is refused for its shape, naming nothing of T.
    await w.refused(
        w.user("mallory"),
        UPDATE_METADATA,
        {"id": w.secret_doc, "m": {"a": {"b": 1}}},
        "BAD_USER_INPUT",
    )
    await w.ok(w.key("EDITOR"), UPDATE_METADATA, {"id": w.secret_doc, "m": {}})


@probe("Mutation", "deleteDocument", "data")
async def attack_delete_document(w: World) -> None:
    await w.unauthenticated_everywhere(DELETE_DOCUMENT, {"id": w.secret_doc}, more=True)
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        # FORBIDDEN whether or not the id exists: a VIEWER learns nothing from it.
        for doc in (w.secret_doc, str(uuid.uuid4()), w.m_doc):
            await w.refused(caller, DELETE_DOCUMENT, {"id": doc}, "FORBIDDEN")
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed"), *w.outsiders_at_t()]
    await w.refuse_all(outsiders, DELETE_DOCUMENT, {"id": w.secret_doc}, "NOT_FOUND")
    await w.refuse_all(
        [w.user("editor", w.team), w.key("EDITOR"), w.key("OWNER")],
        DELETE_DOCUMENT,
        {"id": w.m_doc},
        "NOT_FOUND",
    )
    # The legit delete, of a document made for it.
    for caller in (w.user("editor", w.team), w.key("EDITOR")):
        body = await w.upload(caller, "scratch.pdf", make_pdf([f"Scratch {caller.name}."]))
        doc = body["data"]["uploadDocument"]["id"]
        assert (await w.ok(caller, DELETE_DOCUMENT, {"id": doc})) == {"deleteDocument": True}


async def wait_ready(w: World, caller: Caller, document_id: str) -> None:
    """Polls until the document is READY again (the world's chunk counts come back)."""
    async with asyncio.timeout(30):
        while True:
            data = await w.call(caller, DOCUMENT_STATUS, {"id": document_id})
            if data["data"]["document"]["status"] == "READY":
                return
            await asyncio.sleep(0.05)


@probe("Mutation", "reindexDocument", "data")
async def attack_reindex_document(w: World) -> None:
    await w.unauthenticated_everywhere(REINDEX, {"id": w.secret_doc}, more=True)
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        for doc in (w.secret_doc, str(uuid.uuid4()), w.m_doc):
            await w.refused(caller, REINDEX, {"id": doc}, "FORBIDDEN")
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed"), *w.outsiders_at_t()]
    await w.refuse_all(outsiders, REINDEX, {"id": w.secret_doc}, "NOT_FOUND")
    await w.refuse_all(
        [w.user("editor", w.team), w.key("EDITOR"), w.key("OWNER")],
        REINDEX,
        {"id": w.m_doc},
        "NOT_FOUND",
    )
    # The legit reindex: QUEUED at once, READY again with the same chunks.
    for caller in (w.user("editor", w.team), w.key("EDITOR")):
        data = await w.ok(caller, REINDEX, {"id": w.secret_doc})
        assert data["reindexDocument"] == {"id": w.secret_doc, "status": "QUEUED"}
        await wait_ready(w, caller, w.secret_doc)


async def ws_events(
    w: World, payload: Json, document_id: str | None, *, until_ready: bool, wait: float
) -> list[Json]:
    """Subscribes to documentEvents on a socket opened with `payload`; returns the payloads
    received until one is READY (`until_ready`) or until `wait` seconds pass quietly."""
    async with w.gql.websocket() as ws:
        assert (await init(ws, payload))["type"] == "connection_ack"
        message = {"query": DOCUMENT_EVENTS, "variables": {"id": document_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": message}))
        payloads: list[Json] = []
        while True:
            try:
                async with asyncio.timeout(wait):
                    frame: Json = json.loads(await ws.recv())
            except TimeoutError:
                return payloads
            if frame["type"] == "complete":
                return payloads
            if frame["type"] in ("next", "error"):
                payloads.append(frame["payload"])
                if frame["type"] == "error":
                    return payloads
                event = (frame["payload"].get("data") or {}).get("documentEvents") or {}
                if until_ready and event.get("status") == "READY":
                    return payloads


@probe("Subscription", "documentEvents", "data")
async def attack_document_events(w: World) -> None:
    mallory = {"authorization": f"Bearer {w.accounts['mallory'].token}"}
    owner_at_t = {"authorization": f"Bearer {w.accounts['owner'].token}", "workspaceId": w.team}
    await ws_rejected(w, "anonymous (documentEvents)", {})
    # One of T's documents, by id: NOT_FOUND exactly as for a made-up id.
    made_up = await ws_events(w, mallory, str(uuid.uuid4()), until_ready=False, wait=5)
    for name, payload, doc in (
        ("mallory", mallory, w.secret_doc),
        ("M-ADMIN-key", {"apiKey": w.m_key}, w.loose_doc),
        ("owner@T", owner_at_t, w.m_doc),
    ):
        got = await ws_events(w, payload, doc, until_ready=False, wait=5)
        w.assert_no_leak(json.dumps(got), w.t_secrets() + w.m_secrets(), name)
        assert [p["errors"] for p in got] == [p["errors"] for p in made_up], (name, got)
        assert got[0]["errors"][0]["extensions"] == {"code": "NOT_FOUND"}, got
        w.log.append(f"documentEvents(documentId={w.describe(doc)}) as {name}: NOT_FOUND")
    # Everything of her workspace, while T's document is reindexed: nothing of T reaches her.
    watcher = asyncio.create_task(ws_events(w, mallory, None, until_ready=False, wait=3))
    member = asyncio.create_task(
        ws_events(w, {"apiKey": w.keys["VIEWER"]}, None, until_ready=True, wait=10)
    )
    await asyncio.sleep(0.5)  # both are listening
    await w.ok(w.user("editor", w.team), REINDEX, {"id": w.loose_doc})
    seen_by_member = await member
    seen_by_mallory = await watcher
    assert seen_by_mallory == [], seen_by_mallory
    statuses = [p["data"]["documentEvents"]["status"] for p in seen_by_member]
    assert statuses[-1] == "READY" and "PARSING" in statuses, statuses
    assert {p["data"]["documentEvents"]["documentId"] for p in seen_by_member} == {w.loose_doc}
    w.log.append(f"documentEvents() as mallory during T's reindex: {len(seen_by_mallory)} events")
    await wait_ready(w, w.user("editor", w.team), w.loose_doc)
    await http_document_events(w)


async def http_document_events(w: World) -> None:
    """documentEvents over HTTP (multipart/mixed): the same refusals and the same isolation."""
    await w.refuse_streamed(
        w.unauthenticated() + w.more_unauthenticated(),
        DOCUMENT_EVENTS,
        {"id": None},
        "UNAUTHENTICATED",
    )
    await w.refuse_streamed(w.outsiders_at_t(), DOCUMENT_EVENTS, {"id": None}, "NOT_FOUND")
    for caller, doc in (
        (w.user("mallory"), w.secret_doc),
        (w.mallory_key(), w.loose_doc),
        (w.user("owner", w.team), w.m_doc),
    ):
        await w.refuse_streamed([caller], DOCUMENT_EVENTS, {"id": doc}, "NOT_FOUND")

    # Everything of her workspace, while T's document is reindexed: nothing of T reaches her;
    # a T member following the document sees it to READY.
    def ready(payload: Json) -> bool:
        return bool((payload.get("data") or {}).get("documentEvents", {}).get("status") == "READY")

    watcher = asyncio.create_task(
        w.stream(w.user("mallory"), DOCUMENT_EVENTS, {"id": None}, wait=3)
    )
    member = asyncio.create_task(
        w.stream(w.key("VIEWER", header=True), DOCUMENT_EVENTS, {"id": None}, until=ready)
    )
    await asyncio.sleep(0.5)  # both are listening
    await w.ok(w.user("editor", w.team), REINDEX, {"id": w.loose_doc})
    seen_by_member, seen_by_mallory = await member, await watcher
    assert seen_by_mallory == {"data": None}, seen_by_mallory
    statuses = [d["documentEvents"]["status"] for d in seen_by_member["data"]]
    assert statuses[-1] == "READY" and "PARSING" in statuses, statuses
    assert {d["documentEvents"]["documentId"] for d in seen_by_member["data"]} == {w.loose_doc}
    w.log.append(f"documentEvents() over HTTP as mallory during T's reindex: {seen_by_mallory}")
    await wait_ready(w, w.user("editor", w.team), w.loose_doc)


# --- workspaces, members, collections ---------------------------------------------------------


@probe("Query", "workspaces", "data")
async def attack_workspaces(w: World) -> None:
    await w.unauthenticated_everywhere(WORKSPACES)
    listed = (await w.ok(w.user("viewer"), WORKSPACES))["workspaces"]
    assert {(x["id"], x["role"]) for x in listed} >= {(w.team, "VIEWER")}
    listed = (await w.ok(w.key("EDITOR"), WORKSPACES))["workspaces"]
    assert [(x["id"], x["name"], x["role"]) for x in listed] == [(w.team, TEAM_NAME, "EDITOR")]
    for caller in (w.user("mallory"), w.mallory_key(), w.user("removed")):
        data = await w.ok(caller, WORKSPACES)
        w.assert_no_leak(as_text(data), w.t_secrets(), caller.name)
        assert w.team not in {x["id"] for x in data["workspaces"]}
    await w.refuse_all(w.outsiders_at_t(), WORKSPACES, None, "NOT_FOUND")


@probe("Query", "members", "data")
async def attack_members(w: World) -> None:
    await w.unauthenticated_everywhere(MEMBERS, {"w": w.team}, more=True)
    expected = {w.accounts["owner"].email: "OWNER"}
    expected |= {w.accounts[n].email: role for n, role in MEMBERS_OF_T.items()}
    for caller in (w.user("viewer"), w.user("viewer", w.team), w.key("VIEWER")):
        members = (await w.ok(caller, MEMBERS, {"w": w.team}))["members"]
        assert {m["user"]["email"]: m["role"] for m in members} == expected
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed"), *w.outsiders_at_t()]
    await w.refuse_all(outsiders, MEMBERS, {"w": w.team}, "NOT_FOUND")
    await w.refuse_all(
        [w.user("owner"), w.user("owner", w.team), w.key("OWNER")], MEMBERS, {"w": w.m}, "NOT_FOUND"
    )
    for junk in ("not-an-id", w.secret_doc, w.accounts["owner"].personal):
        await w.refused(w.user("mallory"), MEMBERS, {"w": junk}, "NOT_FOUND")
    data = await w.ok(w.user("mallory"), MEMBERS, {"w": w.m})
    assert [m["user"]["id"] for m in data["members"]] == [w.accounts["mallory"].id]


@probe("Query", "collections", "data")
async def attack_collections(w: World) -> None:
    await w.unauthenticated_everywhere(COLLECTIONS)
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        data = await w.ok(caller, COLLECTIONS)
        assert data["collections"] == [
            {"id": w.collection, "name": COLLECTION_NAME, "documentCount": 1}
        ]
    for caller in (w.user("mallory"), w.mallory_key()):
        data = await w.ok(caller, COLLECTIONS)
        assert data["collections"] == [
            {"id": w.m_collection, "name": M_COLLECTION, "documentCount": 1}
        ]
    assert (await w.ok(w.user("removed"), COLLECTIONS))["collections"] == []
    await w.refuse_all(w.outsiders_at_t(), COLLECTIONS, None, "NOT_FOUND")


@probe("Mutation", "createWorkspace", "data")
async def attack_create_workspace(w: World) -> None:
    await w.unauthenticated_everywhere(CREATE_WORKSPACE, {"n": "Heist"})
    await w.refuse_all(
        [*w.t_keys(), w.mallory_key()], CREATE_WORKSPACE, {"n": "Heist"}, "FORBIDDEN"
    )
    await w.refuse_all(
        [w.user("mallory", w.team), w.user("removed", w.team)],
        CREATE_WORKSPACE,
        {"n": "Heist"},
        "NOT_FOUND",
    )
    made = await w.ok(w.user("mallory"), CREATE_WORKSPACE, {"n": "Mallory Labs"})
    assert made["createWorkspace"]["role"] == "OWNER"
    assert made["createWorkspace"]["id"] != w.team


@probe("Mutation", "inviteMember", "data")
async def attack_invite(w: World) -> None:
    target = "target@elsewhere.example"
    variables = {"w": w.team, "e": target, "r": "VIEWER"}
    await w.unauthenticated_everywhere(INVITE, variables)
    below_admin = [
        w.user("editor"),
        w.user("viewer"),
        w.user("editor", w.team),
        w.key("EDITOR"),
        w.key("VIEWER"),
    ]
    await w.refuse_all(below_admin, INVITE, variables, "FORBIDDEN")
    await w.refuse_all(
        [w.user("admin"), w.key("ADMIN")], INVITE, {**variables, "r": "OWNER"}, "FORBIDDEN"
    )
    outsiders = w.outsiders()
    await w.refuse_all(outsiders, INVITE, variables, "NOT_FOUND")
    await w.refuse_all(
        [w.user("admin"), w.key("ADMIN"), w.key("OWNER")],
        INVITE,
        {**variables, "w": w.m},
        "NOT_FOUND",
    )
    assert w.inbox.to(target) == [], "a refused invitation was mailed"
    for caller in (w.user("admin"), w.key("ADMIN")):
        data = await w.ok(caller, INVITE, variables)
        assert data["inviteMember"]["email"] == target
    assert len(w.inbox.to(target)) == 2


@probe("Mutation", "acceptInvitation", "data")
async def attack_accept(w: World) -> None:
    # An invitation to T for someone else, its token leaked to the attackers.
    target = "target@elsewhere.example"
    before = len(w.inbox.to(target))
    await w.ok(w.user("owner"), INVITE, {"w": w.team, "e": target, "r": "ADMIN"})
    leaked = invitation_token(w.inbox, target, before)
    made_up = "x" * len(leaked)

    async def unknown(c: Caller, v: Mapping[str, Any] | None) -> Json:
        return await w.call(c, ACCEPT, {"t": made_up})

    await w.unauthenticated_everywhere(ACCEPT, {"t": leaked})
    await w.refuse_all([*w.t_keys(), w.mallory_key()], ACCEPT, {"t": leaked}, "FORBIDDEN")
    for caller in (w.user("mallory"), w.user("removed"), w.user("viewer", w.team)):
        message = await w.refused(caller, ACCEPT, {"t": leaked}, "NOT_FOUND")
        other = await unknown(caller, None)
        assert assert_error(other, "NOT_FOUND") == message and other["data"] is None
    await w.refuse_all(
        [w.user("mallory", w.team), w.user("removed", w.team)], ACCEPT, {"t": leaked}, "NOT_FOUND"
    )
    accepted = await w.sql.fetchval(
        "SELECT accepted_at FROM invitation WHERE email = $1 AND role = 'ADMIN'", target
    )
    assert accepted is None, "the leaked invitation was used up"
    # The legit acceptance: mallory invites the viewer into a workspace of hers.
    labs = (await w.ok(w.user("mallory"), CREATE_WORKSPACE, {"n": "Mallory Labs"}))[
        "createWorkspace"
    ]["id"]
    viewer = w.accounts["viewer"]
    before = len(w.inbox.to(viewer.email))
    await w.ok(w.user("mallory"), INVITE, {"w": labs, "e": viewer.email, "r": "EDITOR"})
    token = invitation_token(w.inbox, viewer.email, before)
    joined = (await w.ok(w.user("viewer"), ACCEPT, {"t": token}))["acceptInvitation"]
    assert (joined["id"], joined["role"]) == (labs, "EDITOR")
    second = await w.refused(w.user("viewer"), ACCEPT, {"t": token}, "NOT_FOUND")
    assert second == assert_error(await unknown(w.user("viewer"), None), "NOT_FOUND")


@probe("Mutation", "removeMember", "data")
async def attack_remove_member(w: World) -> None:
    ids = {n: a.id for n, a in w.accounts.items()}
    await w.unauthenticated_everywhere(REMOVE, {"w": w.team, "u": ids["viewer"]})
    forbidden = [
        (w.user("editor"), ids["viewer"]),
        (w.user("viewer"), ids["editor"]),
        (w.user("viewer"), ids["owner"]),
        (w.key("EDITOR"), ids["viewer"]),
        (w.key("VIEWER"), ids["viewer"]),
        (w.user("admin"), ids["owner"]),
        (w.key("ADMIN"), ids["owner"]),
        (w.user("owner"), ids["owner"]),  # the last OWNER
        (w.key("OWNER"), ids["owner"]),
    ]
    await w.refuse_each([(c, {"w": w.team, "u": u}) for c, u in forbidden], REMOVE, "FORBIDDEN")
    outsiders = w.outsiders()
    attempts: list[tuple[Caller, Mapping[str, Any] | None]] = [
        (caller, {"w": w.team, "u": user})
        for caller in outsiders
        for user in (ids["viewer"], ids["owner"])
    ]
    # Not a member of T: "Member not found", the same as for a made-up user.
    for caller in (w.user("admin"), w.key("OWNER")):
        attempts += [(caller, {"w": w.team, "u": ids[u]}) for u in ("mallory", "removed")]
        attempts.append((caller, {"w": w.m, "u": ids["mallory"]}))
    await w.refuse_each(attempts, REMOVE, "NOT_FOUND")
    data = await w.ok(w.user("admin"), REMOVE, {"w": w.team, "u": ids["spare"]})
    assert data == {"removeMember": True}
    await w.refused(w.user("spare", w.team), DOCUMENTS, {"first": 1}, "NOT_FOUND")


@probe("Mutation", "updateMemberRole", "data")
async def attack_update_role(w: World) -> None:
    ids = {n: a.id for n, a in w.accounts.items()}
    await w.unauthenticated_everywhere(SET_ROLE, {"w": w.team, "u": ids["viewer"], "r": "OWNER"})
    forbidden = [
        (w.user("editor"), "viewer", "EDITOR"),
        (w.user("editor"), "editor", "ADMIN"),
        (w.user("viewer"), "viewer", "ADMIN"),
        (w.key("EDITOR"), "viewer", "EDITOR"),
        (w.key("VIEWER"), "viewer", "OWNER"),
        (w.user("admin"), "viewer", "OWNER"),
        (w.user("admin"), "admin", "OWNER"),
        (w.user("admin"), "owner", "VIEWER"),
        (w.key("ADMIN"), "editor", "OWNER"),
        (w.key("ADMIN"), "owner", "ADMIN"),
        (w.user("owner"), "owner", "ADMIN"),  # the last OWNER
    ]
    await w.refuse_each(
        [(c, {"w": w.team, "u": ids[u], "r": r}) for c, u, r in forbidden], SET_ROLE, "FORBIDDEN"
    )
    outsiders = w.outsiders()
    attempts: list[tuple[Caller, Mapping[str, Any] | None]] = [
        (caller, {"w": w.team, "u": ids[user], "r": "OWNER"})
        for caller in outsiders
        for user in ("viewer", "removed")
    ]
    for caller in (w.user("admin"), w.key("OWNER")):
        attempts += [
            (caller, {"w": w.team, "u": ids[u], "r": "VIEWER"}) for u in ("mallory", "removed")
        ]
        attempts.append((caller, {"w": w.m, "u": ids["mallory"], "r": "VIEWER"}))
    await w.refuse_each(attempts, SET_ROLE, "NOT_FOUND")
    for caller in (w.user("admin"), w.key("ADMIN")):
        for role in ("EDITOR", "VIEWER"):
            variables = {"w": w.team, "u": ids["viewer"], "r": role}
            member = (await w.ok(caller, SET_ROLE, variables))["updateMemberRole"]
            assert member == {"user": {"id": ids["viewer"]}, "role": role}


@probe("Mutation", "createCollection", "data")
async def attack_create_collection(w: World) -> None:
    await w.unauthenticated_everywhere(CREATE_COLLECTION, {"n": "Loot"})
    await w.refuse_all(
        [w.user("viewer", w.team), w.key("VIEWER")], CREATE_COLLECTION, {"n": "Loot"}, "FORBIDDEN"
    )
    await w.refuse_all(w.outsiders_at_t(), CREATE_COLLECTION, {"n": "Loot"}, "NOT_FOUND")
    # T's name is free in M: no CONFLICT tells mallory what T calls its collections.
    made = await w.ok(w.user("mallory"), CREATE_COLLECTION, {"n": COLLECTION_NAME})
    await w.ok(w.user("mallory"), DELETE_COLLECTION, {"id": made["createCollection"]["id"]})
    for caller in (w.user("editor", w.team), w.key("EDITOR")):
        made = await w.ok(caller, CREATE_COLLECTION, {"n": f"Scratch {caller.name}"})
        await w.ok(caller, DELETE_COLLECTION, {"id": made["createCollection"]["id"]})


@probe("Mutation", "deleteCollection", "data")
async def attack_delete_collection(w: World) -> None:
    await w.unauthenticated_everywhere(DELETE_COLLECTION, {"id": w.collection})
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        for collection in (w.collection, str(uuid.uuid4()), w.m_collection):
            await w.refused(caller, DELETE_COLLECTION, {"id": collection}, "FORBIDDEN")
    outsiders = w.outsiders()
    await w.refuse_all(outsiders, DELETE_COLLECTION, {"id": w.collection}, "NOT_FOUND")
    await w.refuse_all(
        [w.user("editor", w.team), w.key("EDITOR"), w.key("OWNER")],
        DELETE_COLLECTION,
        {"id": w.m_collection},
        "NOT_FOUND",
    )
    for caller in (w.user("editor", w.team), w.key("EDITOR")):
        made = await w.ok(caller, CREATE_COLLECTION, {"n": f"Scratch {caller.name}"})
        data = await w.ok(caller, DELETE_COLLECTION, {"id": made["createCollection"]["id"]})
        assert data == {"deleteCollection": True}


# --- me, API keys, password -------------------------------------------------------------------


@probe("Query", "me", "access")
async def attack_me(w: World) -> None:
    await w.unauthenticated_everywhere(ME)
    await w.refuse_all([*w.t_keys(), w.mallory_key()], ME, None, "FORBIDDEN")
    await w.refuse_all(
        [w.user("mallory", w.team), w.user("removed", w.team)], ME, None, "NOT_FOUND"
    )
    for name, caller in (("mallory", w.user("mallory")), ("viewer", w.user("viewer", w.team))):
        me = (await w.ok(caller, ME))["me"]
        assert me == {"id": w.accounts[name].id, "email": w.accounts[name].email}


@probe("Query", "apiKeys", "access")
async def attack_api_keys(w: World) -> None:
    await w.unauthenticated_everywhere(API_KEYS, {"w": w.team}, more=True)
    for caller, variables in (
        (w.user("editor"), {"w": w.team}),
        (w.user("editor", w.team), {}),
        (w.user("viewer"), {"w": w.team}),
        (w.key("EDITOR"), {}),
        (w.key("EDITOR"), {"w": w.team}),
        (w.key("VIEWER"), {}),
    ):
        await w.refused(caller, API_KEYS, variables, "FORBIDDEN")
    outsiders = [w.user("mallory"), w.mallory_key(), w.user("removed")]
    await w.refuse_all(outsiders, API_KEYS, {"w": w.team}, "NOT_FOUND")
    await w.refuse_all(w.outsiders_at_t(), API_KEYS, {}, "NOT_FOUND")
    await w.refuse_all(
        [w.user("admin"), w.key("ADMIN"), w.key("OWNER")], API_KEYS, {"w": w.m}, "NOT_FOUND"
    )
    await w.refused(w.user("mallory"), API_KEYS, {"w": "not-an-id"}, "NOT_FOUND")
    for caller in (w.user("mallory"), w.mallory_key()):
        data = await w.ok(caller, API_KEYS, {})
        w.assert_no_leak(as_text(data), w.t_secrets(), caller.name)
        assert [k["id"] for k in data["apiKeys"]] == [w.m_key_id]
    t_keys = {*w.key_ids.values(), w.revoked_key_id}
    for caller, variables in (
        (w.user("admin"), {"w": w.team}),
        (w.user("owner", w.team), {}),
        (w.key("ADMIN"), {}),
    ):
        data = await w.ok(caller, API_KEYS, variables)
        assert {k["id"] for k in data["apiKeys"]} == t_keys
        w.assert_no_leak(as_text(data), w.m_secrets(), caller.name)


@probe("Mutation", "createApiKey", "access")
async def attack_create_api_key(w: World) -> None:
    variables = {"w": w.team, "n": "backdoor", "r": "VIEWER"}
    await w.unauthenticated_everywhere(CREATE_KEY, variables)
    forbidden: list[tuple[Caller, Mapping[str, Any] | None]] = [
        (w.user("editor"), variables),
        (w.user("viewer"), variables),
        (w.user("editor", w.team), variables),
        (w.user("admin"), {**variables, "r": "OWNER"}),
        (w.mallory_key(), {**variables, "w": w.m}),  # a key never makes keys
    ]
    forbidden += [(key, {**variables, "r": role}) for key in w.t_keys() for role in ROLES[:2]]
    await w.refuse_each(forbidden, CREATE_KEY, "FORBIDDEN")
    outsiders = w.outsiders()
    await w.refuse_all(outsiders, CREATE_KEY, {**variables, "r": "OWNER"}, "NOT_FOUND")
    await w.refuse_all(
        [w.user("admin"), w.user("owner")], CREATE_KEY, {**variables, "w": w.m}, "NOT_FOUND"
    )
    created = (await w.ok(w.user("admin"), CREATE_KEY, variables))["createApiKey"]
    key = Caller("new T-VIEWER-key", created["secret"], sees=frozenset({w.team}))
    listed = (await w.ok(key, DOCUMENTS, {"first": 100}))["documents"]["edges"]
    assert {e["node"]["id"] for e in listed} == {w.secret_doc, w.loose_doc}
    await w.ok(w.user("admin", w.team), REVOKE_KEY, {"id": created["apiKey"]["id"]})


@probe("Mutation", "revokeApiKey", "access")
async def attack_revoke_api_key(w: World) -> None:
    target = {"id": w.key_ids["VIEWER"]}
    await w.unauthenticated_everywhere(REVOKE_KEY, target)
    below_admin = [w.user("editor", w.team), w.user("viewer", w.team), w.key("EDITOR")]
    forbidden: list[tuple[Caller, Mapping[str, Any] | None]] = [
        (caller, {"id": key_id})
        for caller in below_admin
        for key_id in (w.key_ids["VIEWER"], str(uuid.uuid4()), w.m_key_id)
    ]
    await w.refuse_each([*forbidden, (w.key("VIEWER"), target)], REVOKE_KEY, "FORBIDDEN")
    outsiders = w.outsiders()
    attempts: list[tuple[Caller, Mapping[str, Any] | None]] = [
        (caller, {"id": key_id})
        for caller in outsiders
        for key_id in (w.key_ids["VIEWER"], w.key_ids["OWNER"])
    ]
    await w.refuse_each(attempts, REVOKE_KEY, "NOT_FOUND")
    # A member of T without X-Workspace-Id acts in their personal workspace: no T key there.
    await w.refused(w.user("admin"), REVOKE_KEY, target, "NOT_FOUND")
    await w.refuse_all(
        [w.user("admin", w.team), w.key("ADMIN"), w.key("OWNER")],
        REVOKE_KEY,
        {"id": w.m_key_id},
        "NOT_FOUND",
    )
    for caller in (w.user("admin", w.team), w.key("ADMIN")):
        created = await w.ok(w.user("admin"), CREATE_KEY, {"w": w.team, "n": "tmp", "r": "VIEWER"})
        key_id = created["createApiKey"]["apiKey"]["id"]
        revoked = (await w.ok(caller, REVOKE_KEY, {"id": key_id}))["revokeApiKey"]
        assert revoked["id"] == key_id and revoked["revokedAt"] is not None
        dead = Caller("just revoked key", created["createApiKey"]["secret"])
        await w.refused(dead, DOCUMENTS, {"first": 1}, "UNAUTHENTICATED")


@probe("Mutation", "changePassword", "access")
async def attack_change_password(w: World) -> None:
    variables = {"c": PASSWORD, "n": NEW_PASSWORD}
    await w.unauthenticated_everywhere(CHANGE_PASSWORD, variables)
    await w.refuse_all([*w.t_keys(), w.mallory_key()], CHANGE_PASSWORD, variables, "FORBIDDEN")
    await w.refuse_all(
        [w.user("mallory", w.team), w.user("removed", w.team)],
        CHANGE_PASSWORD,
        variables,
        "NOT_FOUND",
    )
    # Mallory changes her own password: hers only; everyone in T keeps their sessions.
    mallory = w.accounts["mallory"]
    assert await w.ok(w.user("mallory"), CHANGE_PASSWORD, variables) == {"changePassword": True}
    await w.refused(w.user("mallory"), ME, None, "UNAUTHENTICATED")
    for name in ("owner", *MEMBERS_OF_T):
        assert (await w.ok(w.user(name), ME))["me"]["id"] == w.accounts[name].id
    await w.ok(Caller("anonymous", None), LOGIN, {"e": w.accounts["owner"].email, "p": PASSWORD})
    login = await w.ok(Caller("anonymous", None), LOGIN, {"e": mallory.email, "p": NEW_PASSWORD})
    mallory.token = login["login"]["accessToken"]


# --- conversations and ask --------------------------------------------------------------------


async def ensure_conversations(w: World) -> None:
    """A conversation each for the viewer (in T), T's VIEWER key and mallory (in M)."""
    if w.conversations:
        return
    for name, caller, question in (
        ("viewer", w.user("viewer", w.team), T_QUESTION),
        ("T-VIEWER-key", w.key("VIEWER"), T_QUESTION),
        ("mallory", w.user("mallory"), QUESTION),
    ):
        asked = (await w.ok(caller, ASK, {"q": question}))["ask"]
        conversation = asked["conversationId"]
        w.conversations[name] = conversation
        w.labels[conversation] = f"conversation:{name}"
        # Nobody else may know a conversation: its id is foreign to every other caller.
        w.home[conversation] = f"private:{name}"


async def messages_in(w: World, conversation: str) -> int:
    count: int = await w.sql.fetchval(
        "SELECT count(*) FROM message WHERE conversation_id = $1", uuid.UUID(conversation)
    )
    return count


def not_the_owner_of(w: World, name: str) -> list[Caller]:
    """Callers that must not reach `name`'s conversation: outsiders, T's other members and
    keys, and `name` itself acting in another workspace."""
    return [
        *w.outsiders(),
        w.user("owner", w.team),
        w.key("OWNER"),
        *([w.key("VIEWER")] if name != "T-VIEWER-key" else [w.user("viewer", w.team)]),
        *([w.user("viewer")] if name == "viewer" else []),
    ]


@probe("Mutation", "ask", "access")
async def attack_ask(w: World) -> None:
    await ensure_conversations(w)
    await w.unauthenticated_everywhere(ASK, {"q": QUESTION})
    await w.refuse_all(w.outsiders_at_t(), ASK, {"q": QUESTION}, "NOT_FOUND")
    # Nobody continues another's conversation, nor learns that it exists.
    for name in ("viewer", "T-VIEWER-key"):
        conversation = w.conversations[name]
        before = await messages_in(w, conversation)
        await w.refuse_all(
            not_the_owner_of(w, name), ASK, {"q": QUESTION, "conv": conversation}, "NOT_FOUND"
        )
        assert await messages_in(w, conversation) == before, "a refused ask was stored"
    # Mallory's answers: M's sources only, and no word of T in the prompt or the answer.
    for caller in (w.user("mallory"), w.mallory_key()):
        for collections in (None, [w.collection]):
            asked = (await w.ok(caller, ASK, {"q": QUESTION, "c": collections}))["ask"]
            w.assert_no_leak(as_text(asked), w.t_secrets(), caller.name)
            w.assert_no_leak(prompt_of(w), w.t_secrets(), f"the prompt for {caller.name}")
            expected = set() if collections else {w.m_doc}
            assert {s["document"]["id"] for s in asked["sources"]} == expected
    # The legit follow-up: the viewer's own conversation, with T's sources.
    variables = {"q": "And who keeps it?", "conv": w.conversations["viewer"]}
    asked = (await w.ok(w.user("viewer", w.team), ASK, variables))["ask"]
    assert asked["conversationId"] == w.conversations["viewer"]
    assert {s["document"]["id"] for s in asked["sources"]} <= {w.secret_doc, w.loose_doc}
    assert asked["sources"], asked
    w.assert_no_leak(as_text(asked), w.m_secrets(), "viewer@T")


@probe("Query", "conversations", "access")
async def attack_conversations(w: World) -> None:
    await ensure_conversations(w)
    await w.unauthenticated_everywhere(CONVERSATIONS, {"first": 1})
    await w.refuse_all(w.outsiders_at_t(), CONVERSATIONS, {"first": 1}, "NOT_FOUND")
    own = {
        "viewer": w.user("viewer", w.team),
        "T-VIEWER-key": w.key("VIEWER"),
        "mallory": w.user("mallory"),
    }
    cursors: list[str] = []
    for name, caller in own.items():
        page = (await w.ok(caller, CONVERSATIONS, {"first": 100}))["conversations"]
        assert w.conversations[name] in [e["node"]["id"] for e in page["edges"]]
        assert page["pageInfo"]["hasNextPage"] is False
        cursors += [e["cursor"] for e in page["edges"]]
    # Everyone sees their own conversations only, whatever cursor they send.
    everyone = {
        **own,
        "M-ADMIN-key": w.mallory_key(),
        "owner@T": w.user("owner", w.team),
        "admin@T": w.user("admin", w.team),
        "viewer (personal)": w.user("viewer"),
        "removed": w.user("removed"),
        "T-OWNER-key": w.key("OWNER"),
        "T-EDITOR-key": w.key("EDITOR"),
    }
    # ... and foreign cursors change nothing for those most likely to try them.
    cursor_users = {"mallory", "M-ADMIN-key", "owner@T", "T-OWNER-key"}
    for name, caller in everyone.items():
        others = {c for n, c in w.conversations.items() if n != name}
        for after in (None, *cursors) if name in cursor_users else (None,):
            data = await w.ok(caller, CONVERSATIONS, {"first": 100, "after": after})
            listed = {e["node"]["id"] for e in data["conversations"]["edges"]}
            assert not listed & others, (name, data)
            if caller.sees == frozenset({w.m}):
                w.assert_no_leak(as_text(data), w.t_secrets(), name)


@probe("Query", "conversation", "access")
async def attack_conversation(w: World) -> None:
    await ensure_conversations(w)
    await w.unauthenticated_everywhere(CONVERSATION, {"id": w.conversations["viewer"]})
    for name in ("viewer", "T-VIEWER-key", "mallory"):
        strangers = (
            not_the_owner_of(w, name)
            if name != "mallory"
            else [
                w.user("viewer", w.team),
                w.key("VIEWER"),
                w.key("OWNER"),
                w.user("owner", w.team),
                w.user("mallory", w.team),
            ]
        )
        for caller in strangers:
            if caller.name == "mallory" and name == "mallory":
                continue
            await w.refused(caller, CONVERSATION, {"id": w.conversations[name]}, "NOT_FOUND")
    data = await w.ok(w.user("viewer", w.team), CONVERSATION, {"id": w.conversations["viewer"]})
    messages = data["conversation"]["messages"]
    assert messages[0] == {
        "role": "user",
        "content": T_QUESTION,
        "sources": [],
        "citations": [],
    }
    assert {s["documentId"] for s in messages[1]["sources"]} <= {w.secret_doc, w.loose_doc}
    for cited in messages[1]["sources"] + messages[1]["citations"]:
        assert cited["document"]["id"] == cited["documentId"], cited
    data = await w.ok(w.user("mallory"), CONVERSATION, {"id": w.conversations["mallory"]})
    w.assert_no_leak(as_text(data), w.t_secrets(), "mallory")


ANSWER_STREAM = """
subscription($id: ID!, $after: Int) {
  answerStream(messageId: $id, afterSeq: $after) {
    __typename
    ... on AnswerSources { seq messageId sources { text document { id filename } } }
    ... on AnswerToken { seq text }
    ... on AnswerDone { seq messageId citations { documentId } }
    ... on AnswerError { seq code message }
  }
}
"""


async def ensure_answers(w: World) -> dict[str, str]:
    """The answer (message id) in each of `ensure_conversations`' conversations, private to
    its caller as its conversation is."""
    await ensure_conversations(w)
    answers: dict[str, str] = {}
    for name, conversation in w.conversations.items():
        found = await w.sql.fetchval(
            "SELECT id FROM message WHERE conversation_id = $1 AND role = 'assistant'",
            uuid.UUID(conversation),
        )
        answers[name] = str(found)
        w.labels[answers[name]] = f"answer:{name}"
        w.home[answers[name]] = f"private:{name}"
    return answers


@probe("Subscription", "answerStream", "access")
async def attack_answer_stream(w: World) -> None:
    answers = await ensure_answers(w)
    await w.refuse_streamed(
        w.unauthenticated() + w.more_unauthenticated(),
        ANSWER_STREAM,
        {"id": answers["viewer"]},
        "UNAUTHENTICATED",
    )
    # Another caller's answer reads as a made-up id, over HTTP and over a socket.
    for name in ("viewer", "T-VIEWER-key", "mallory"):
        strangers = (
            not_the_owner_of(w, name)
            if name != "mallory"
            else [w.user("viewer", w.team), w.key("VIEWER"), w.key("OWNER"), w.user("owner")]
        )
        await w.refuse_streamed(
            [c for c in strangers if c.name != "mallory" or name != "mallory"],
            ANSWER_STREAM,
            {"id": answers[name]},
            "NOT_FOUND",
        )
    mallory = {"authorization": f"Bearer {w.accounts['mallory'].token}"}

    async def over_socket(message_id: str, after: int = 0) -> list[Json]:
        async with w.gql.websocket() as ws:
            assert (await init(ws, mallory))["type"] == "connection_ack"
            return await ws_operation(ws, ANSWER_STREAM, {"id": message_id, "after": after}, "1")

    made_up = await over_socket(str(uuid.uuid4()))
    for after in (0, 1, 10_000):
        theirs = await over_socket(answers["viewer"], after)
        assert theirs == made_up, theirs
        assert theirs[0]["errors"][0]["extensions"] == {"code": "NOT_FOUND"}, theirs
        w.assert_no_leak(json.dumps(theirs), w.t_secrets(), "mallory (answerStream)")
    w.log.append(f"answerStream(viewer's answer) as mallory over a socket: {made_up[0]}")
    # The owner replays it whole, with T's sources only; mallory replays her own.
    body = await w.stream(w.user("viewer", w.team), ANSWER_STREAM, {"id": answers["viewer"]})
    events = [d["answerStream"] for d in body["data"]]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    assert events[0]["__typename"] == "AnswerSources" and events[-1]["__typename"] == "AnswerDone"
    assert {s["document"]["id"] for s in events[0]["sources"]} <= {w.secret_doc, w.loose_doc}
    w.assert_no_leak(json.dumps(body), w.m_secrets(), "viewer (answerStream)")
    body = await w.stream(w.user("mallory"), ANSWER_STREAM, {"id": answers["mallory"]})
    assert body["data"][-1]["answerStream"]["__typename"] == "AnswerDone", body
    w.assert_no_leak(json.dumps(body), w.t_secrets(), "mallory (answerStream)")


@probe("Mutation", "deleteConversation", "access")
async def attack_delete_conversation(w: World) -> None:
    await ensure_conversations(w)
    await w.unauthenticated_everywhere(DELETE_CONVERSATION, {"id": w.conversations["viewer"]})
    for name in ("viewer", "T-VIEWER-key"):
        for caller in not_the_owner_of(w, name):
            variables = {"id": w.conversations[name]}
            await w.refused(caller, DELETE_CONVERSATION, variables, "NOT_FOUND")
        assert await messages_in(w, w.conversations[name]) >= 2
    for caller in (w.user("viewer", w.team), w.key("OWNER")):
        await w.refused(
            caller, DELETE_CONVERSATION, {"id": w.conversations["mallory"]}, "NOT_FOUND"
        )
    assert await messages_in(w, w.conversations["mallory"]) >= 2
    # The legit delete, of a conversation made for it.
    for caller in (w.user("viewer", w.team), w.key("VIEWER")):
        made = (await w.ok(caller, ASK, {"q": "A throwaway question"}))["ask"]["conversationId"]
        assert await w.ok(caller, DELETE_CONVERSATION, {"id": made}) == {"deleteConversation": True}
        assert await messages_in(w, made) == 0


# --- the answer subscription --------------------------------------------------------------------


async def ws_rejected(w: World, name: str, payload: Json) -> None:
    """connection_init with `payload` is answered by closing the socket with 4403."""
    async with w.gql.websocket() as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await init(ws, payload)
    frame = closed.value.rcvd
    assert frame is not None and frame.code == 4403, (name, closed.value)
    w.assert_no_leak(frame.reason, w.t_secrets() + w.m_secrets(), name)
    w.log.append(f"answer (connection_init) as {name}: closed {frame.code} {frame.reason!r}")


async def ws_operation(ws: ClientConnection, query: str, variables: Json, op_id: str) -> list[Json]:
    """Runs one operation on an open socket; returns its `next` payloads (or the `error`)."""
    await ws.send(
        json.dumps(
            {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )
    )
    payloads: list[Json] = []
    async with asyncio.timeout(10):
        while True:
            frame: Json = json.loads(await ws.recv())
            if frame.get("id") != op_id:
                continue
            if frame["type"] == "next":
                payloads.append(frame["payload"])
            elif frame["type"] == "complete":
                return payloads
            elif frame["type"] == "error":
                return [{"errors": frame["payload"], "data": None}]


async def ws_sources(
    w: World, name: str, payload: Json, collections: list[str] | None = None
) -> list[str]:
    """Asks QUESTION on a socket opened with `payload`; returns the sources' document ids."""
    async with w.gql.websocket() as ws:
        ack = await init(ws, payload)
        assert ack["type"] == "connection_ack", ack
        payloads = await ws_operation(ws, ANSWER, {"q": QUESTION, "c": collections}, "1")
    events = [p["data"]["answer"] for p in payloads if not p.get("errors")]
    assert events and events[0]["__typename"] == "AnswerSources", (name, payloads)
    assert all(e["__typename"] != "AnswerError" for e in events), (name, events)
    sources = [s["document"]["id"] for s in events[0]["sources"]]
    w.log.append(f"answer(c={w.describe(collections)}) as {name}: sources {w.describe(sources)}")
    return [str(s) for s in sources]


def prompt_of(w: World) -> str:
    return "\n".join(m["content"] for m in w.ollama.last_chat_messages)


@probe("Subscription", "answer", "access")
async def attack_answer(w: World) -> None:
    owner, mallory = w.accounts["owner"], w.accounts["mallory"]
    rejected: list[tuple[str, Json]] = [
        ("anonymous", {}),
        ("revoked OWNER key", {"apiKey": w.revoked_key}),
        ("revoked OWNER key (Bearer)", {"authorization": f"Bearer {w.revoked_key}"}),
        ("expired OWNER token", {"authorization": f"Bearer {w.expired_token}"}),
        ("reused refresh token", {"authorization": f"Bearer {w.reused_refresh}"}),
        ("rotated refresh token", {"authorization": f"Bearer {w.rotated_refresh}"}),
        ("revoked OWNER key@T", {"apiKey": w.revoked_key, "workspaceId": w.team}),
        ("expired token@T", {"authorization": f"Bearer {w.expired_token}", "workspaceId": w.team}),
        ("mallory@T", {"authorization": f"Bearer {mallory.token}", "workspaceId": w.team}),
        ("M-ADMIN-key@T", {"apiKey": w.m_key, "workspaceId": w.team}),
        (
            "removed@T",
            {"authorization": f"Bearer {w.accounts['removed'].token}", "workspaceId": w.team},
        ),
        ("mallory@random", {"authorization": f"Bearer {mallory.token}", "workspaceId": "x"}),
        ("owner@M", {"authorization": f"Bearer {owner.token}", "workspaceId": w.m}),
    ]
    for name, payload in rejected:
        await ws_rejected(w, name, payload)
    # Mallory and her key: sources from M only, and no T text reaches the model.
    for name, payload in (
        ("mallory", {"authorization": f"Bearer {mallory.token}"}),
        ("M-ADMIN-key", {"apiKey": w.m_key}),
    ):
        assert await ws_sources(w, name, payload) == [w.m_doc]
        w.assert_no_leak(prompt_of(w), w.t_secrets(), f"the prompt for {name}")
        assert await ws_sources(w, name, payload, [w.collection]) == []
    # The legit members and keys get T's sources, and none of M's.
    for name, payload in (
        (
            "viewer@T",
            {"authorization": f"Bearer {w.accounts['viewer'].token}", "workspaceId": w.team},
        ),
        ("T-VIEWER-key", {"apiKey": w.keys["VIEWER"]}),
    ):
        assert set(await ws_sources(w, name, payload)) == {w.secret_doc, w.loose_doc}
        assert "amber walrus" in prompt_of(w)
        w.assert_no_leak(prompt_of(w), w.m_secrets(), f"the prompt for {name}")
        assert await ws_sources(w, name, payload, [w.m_collection]) == []
    # Over HTTP (multipart/mixed), with the credentials in the headers: the same refusals, as
    # JSON before any stream opens, and the same sources.
    await w.refuse_streamed(
        w.unauthenticated() + w.more_unauthenticated(),
        ANSWER,
        {"q": QUESTION, "c": None},
        "UNAUTHENTICATED",
    )
    await w.refuse_streamed(
        [*w.outsiders_at_t(), w.user("owner", w.m)], ANSWER, {"q": QUESTION, "c": None}, "NOT_FOUND"
    )
    for caller, expected in (
        (w.user("mallory"), {w.m_doc}),
        (w.mallory_key(), {w.m_doc}),
        (w.user("viewer", w.team), {w.secret_doc, w.loose_doc}),
        (w.key("VIEWER", header=True), {w.secret_doc, w.loose_doc}),
    ):
        body = await w.stream(caller, ANSWER, {"q": QUESTION, "c": None})
        assert not body.get("errors") and body["data"], (caller.name, body)
        events = [d["answer"] for d in body["data"]]
        assert events[0]["__typename"] == "AnswerSources", (caller.name, events)
        assert all(e["__typename"] != "AnswerError" for e in events), (caller.name, events)
        sources = {s["document"]["id"] for s in events[0]["sources"]}
        assert sources == expected, (caller.name, sources)
        others = w.t_secrets() if expected == {w.m_doc} else w.m_secrets()
        w.assert_no_leak(json.dumps(body), others, caller.name)
        w.assert_no_leak(prompt_of(w), others, f"the prompt for {caller.name} (HTTP)")
        w.log.append(f"answer over HTTP as {caller.name}: sources {w.describe(sorted(sources))}")
    answer_args = schema._schema.subscription_type
    if answer_args is not None and "conversationId" in answer_args.fields["answer"].args:
        await answer_in_others_conversations(w)
    await stale_sockets(w)


async def answer_in_others_conversations(w: World) -> None:
    """`answer` with another caller's conversation: NOT_FOUND, as for a made-up id."""
    await ensure_conversations(w)
    query = ANSWER.replace("$c: [ID!])", "$c: [ID!], $conv: ID)").replace(
        "collectionIds: $c)", "collectionIds: $c, conversationId: $conv)"
    )
    mallory = {"authorization": f"Bearer {w.accounts['mallory'].token}"}
    owner_at_t = {"authorization": f"Bearer {w.accounts['owner'].token}", "workspaceId": w.team}

    async def errors_for(payload: Json, conversation: str) -> tuple[str, Json]:
        async with w.gql.websocket() as ws:
            assert (await init(ws, payload))["type"] == "connection_ack"
            variables = {"q": QUESTION, "c": None, "conv": conversation}
            payloads = await ws_operation(ws, query, variables, "1")
        w.assert_no_leak(json.dumps(payloads), w.t_secrets() + w.m_secrets(), "answer")
        errors = [e for p in payloads for e in p.get("errors") or []]
        assert len(payloads) == 1 and errors, payloads
        return errors[0]["message"], errors[0].get("extensions")

    made_up = await errors_for(mallory, str(uuid.uuid4()))
    assert made_up[1] == {"code": "NOT_FOUND"}, made_up
    for name, payload, conversation in (
        ("mallory", mallory, w.conversations["viewer"]),
        ("M-ADMIN-key", {"apiKey": w.m_key}, w.conversations["T-VIEWER-key"]),
        ("owner@T", owner_at_t, w.conversations["viewer"]),
        ("T-OWNER-key", {"apiKey": w.keys["OWNER"]}, w.conversations["mallory"]),
    ):
        assert await errors_for(payload, conversation) == made_up, name
        w.log.append(
            f"answer(conversationId={w.describe(conversation)}) as {name}: "
            f"NOT_FOUND {made_up[0]!r}, the same as for a random id"
        )


async def stale_sockets(w: World) -> None:
    """A socket opened while allowed stops serving T once the member is removed or the key
    revoked: every operation checks the caller again."""
    spare = w.accounts["spare"]
    created = await w.ok(w.user("owner"), CREATE_KEY, {"w": w.team, "n": "tmp", "r": "VIEWER"})
    key, key_id = created["createApiKey"]["secret"], created["createApiKey"]["apiKey"]["id"]
    async with w.gql.websocket() as member, w.gql.websocket() as service:
        for ws, payload in (
            (member, {"authorization": f"Bearer {spare.token}", "workspaceId": w.team}),
            (service, {"apiKey": key}),
        ):
            assert (await init(ws, payload))["type"] == "connection_ack"
            payloads = await ws_operation(ws, ANSWER, {"q": QUESTION, "c": None}, "before")
            assert payloads[0]["data"]["answer"]["__typename"] == "AnswerSources"
        await w.ok(w.user("owner"), REMOVE, {"w": w.team, "u": spare.id})
        await w.ok(w.user("owner", w.team), REVOKE_KEY, {"id": key_id})
        for name, ws in (("spare@T after removal", member), ("T key after revocation", service)):
            try:
                payloads = await ws_operation(ws, ANSWER, {"q": QUESTION, "c": None}, "after")
            except ConnectionClosed as closed:
                w.log.append(f"answer on an open socket as {name}: closed {closed.rcvd}")
                continue
            text = json.dumps(payloads)
            assert w.secret_doc not in text and "amber walrus" not in text, (name, payloads)
            errors = [e for p in payloads for e in p.get("errors") or []]
            assert errors, (name, payloads)
            w.log.append(f"answer on an open socket as {name}: {errors[0]}")


# --- public operations --------------------------------------------------------------------------

ANONYMOUS = Caller("anonymous", None)


@probe("Mutation", "register", "access", public=True)
async def attack_register(w: World) -> None:
    owner = w.accounts["owner"]
    # Re-registering a member's email takes nothing over, and reads as for a new address: the
    # owner is mailed a notice (no code), the account and sessions stay.
    before = len(w.inbox.to(owner.email))
    for caller in (ANONYMOUS, w.user("mallory")):
        data = await w.ok(caller, REGISTER, {"e": owner.email, "p": "mallory owns this now"})
        assert data == {"register": {"email": owner.email}}, data
    await w.inbox.wait_for(owner.email, after=before + 1)  # both notices reach him
    assert all("tried to register" in m["Subject"] for m in w.inbox.to(owner.email)[before:])
    body = await w.call(ANONYMOUS, VERIFY, {"e": owner.email, "c": "000000", "p": PASSWORD})
    assert_error(body, "BAD_USER_INPUT")
    await w.ok(ANONYMOUS, LOGIN, {"e": owner.email, "p": PASSWORD})
    body = await w.call(ANONYMOUS, LOGIN, {"e": owner.email, "p": "mallory owns this now"})
    assert_error(body, "UNAUTHENTICATED")
    assert (await w.ok(w.user("owner"), ME))["me"]["id"] == owner.id
    data = await w.ok(ANONYMOUS, REGISTER, {"e": "newcomer@elsewhere.example", "p": PASSWORD})
    assert data["register"]["email"] == "newcomer@elsewhere.example"


@probe("Mutation", "verifyEmail", "access", public=True)
async def attack_verify_email(w: World) -> None:
    owner = w.accounts["owner"]
    known = await w.refused(
        ANONYMOUS, VERIFY, {"e": owner.email, "c": "000000", "p": PASSWORD}, "BAD_USER_INPUT"
    )
    unknown = await w.refused(
        ANONYMOUS,
        VERIFY,
        {"e": "nobody@elsewhere.example", "c": "000000", "p": PASSWORD},
        "BAD_USER_INPUT",
    )
    assert known == unknown, "verifyEmail tells a member's email from an unknown one"
    # Pre-hijacking: mallory registers the address first, with her password; the code goes to
    # the mailbox, and its reader sets the password. Mallory's never opens the account.
    fresh = "fresh@elsewhere.example"
    before = len(w.inbox.to(fresh))
    await w.ok(w.user("mallory"), REGISTER, {"e": fresh, "p": "mallory owns this now"})
    code = await w.inbox.wait_for_code(fresh, after=before)
    await w.ok(ANONYMOUS, VERIFY, {"e": fresh, "c": code, "p": PASSWORD})
    await w.refused(ANONYMOUS, LOGIN, {"e": fresh, "p": "mallory owns this now"}, "UNAUTHENTICATED")
    await w.ok(ANONYMOUS, LOGIN, {"e": fresh, "p": PASSWORD})


@probe("Mutation", "login", "access", public=True)
async def attack_login(w: World) -> None:
    owner = w.accounts["owner"]
    known = await w.refused(ANONYMOUS, LOGIN, {"e": owner.email, "p": "guess"}, "UNAUTHENTICATED")
    unknown = await w.refused(
        ANONYMOUS, LOGIN, {"e": "nobody@elsewhere.example", "p": "guess"}, "UNAUTHENTICATED"
    )
    assert known == unknown
    await w.ok(ANONYMOUS, LOGIN, {"e": owner.email, "p": PASSWORD})


@probe("Mutation", "refreshToken", "access", public=True)
async def attack_refresh(w: World) -> None:
    owner = w.accounts["owner"]
    random_token = "r" * len(w.reused_refresh)
    made_up = await w.refused(ANONYMOUS, REFRESH, {"t": random_token}, "UNAUTHENTICATED")
    for token in (w.reused_refresh, w.rotated_refresh, owner.token, w.expired_token):
        for caller in (ANONYMOUS, w.user("mallory")):
            message = await w.refused(caller, REFRESH, {"t": token}, "UNAUTHENTICATED")
            assert message == made_up
    # The owner's other sessions survive the reuse: the live refresh token still rotates.
    session = (await w.ok(ANONYMOUS, REFRESH, {"t": w.live_refresh}))["refreshToken"]
    w.live_refresh = session["refreshToken"]
    assert (await w.ok(w.user("owner"), ME))["me"]["id"] == owner.id


@probe("Mutation", "logout", "access", public=True)
async def attack_logout(w: World) -> None:
    owner = w.accounts["owner"]
    # Anything that is not a refresh token logs nobody out, and says the same as an unknown one.
    for caller in (ANONYMOUS, w.user("mallory")):
        for token in ("nope", owner.token, w.keys["OWNER"], w.expired_token, w.reused_refresh):
            assert await w.ok(caller, LOGOUT, {"t": token}) == {"logout": True}
    assert (await w.ok(w.user("owner"), ME))["me"]["id"] == owner.id
    assert (await w.ok(w.key("OWNER"), DOCUMENTS, {"first": 1}))["documents"]["edges"]
    session = (await w.ok(ANONYMOUS, REFRESH, {"t": w.live_refresh}))["refreshToken"]
    # Its holder logs out; that session ends, and only that one.
    assert await w.ok(ANONYMOUS, LOGOUT, {"t": session["refreshToken"]}) == {"logout": True}
    await w.refused(ANONYMOUS, REFRESH, {"t": session["refreshToken"]}, "UNAUTHENTICATED")
    assert (await w.ok(w.user("owner"), ME))["me"]["id"] == owner.id


@probe("Mutation", "requestPasswordReset", "access", public=True)
async def attack_request_reset(w: World) -> None:
    owner = w.accounts["owner"]
    nobody = "nobody@elsewhere.example"
    before = len(w.inbox.to(owner.email))
    bodies = [
        await w.call(caller, REQUEST_RESET, {"e": email})
        for caller in (ANONYMOUS, w.user("mallory"))
        for email in (owner.email, nobody)
    ]
    assert all(b == {"data": {"requestPasswordReset": True}} for b in bodies), bodies
    w.log.append("requestPasswordReset(member's email / unknown email): the same `true`")
    await w.inbox.wait_for_code(owner.email, after=before + 1)  # both reset codes reach him
    assert w.inbox.to(nobody) == []
    await w.ok(ANONYMOUS, LOGIN, {"e": owner.email, "p": PASSWORD})  # the password stays


@probe("Mutation", "resetPassword", "access", public=True)
async def attack_reset_password(w: World) -> None:
    owner = w.accounts["owner"]
    await w.ok(ANONYMOUS, REQUEST_RESET, {"e": owner.email})  # a live code to guess at
    messages = [
        await w.refused(
            caller, RESET, {"e": email, "c": "000000", "n": NEW_PASSWORD}, "BAD_USER_INPUT"
        )
        for caller in (ANONYMOUS, w.user("mallory"))
        for email in (owner.email, "nobody@elsewhere.example")
    ]
    assert len(set(messages)) == 1, messages
    await w.ok(ANONYMOUS, LOGIN, {"e": owner.email, "p": PASSWORD})
    assert (await w.ok(w.user("owner"), ME))["me"]["id"] == owner.id


# --- the tests ----------------------------------------------------------------------------------


def schema_operations() -> set[tuple[str, str]]:
    graphql_schema = schema._schema
    operations: set[tuple[str, str]] = set()
    for root in (
        graphql_schema.query_type,
        graphql_schema.mutation_type,
        graphql_schema.subscription_type,
    ):
        assert root is not None
        operations |= {(root.name, name) for name in root.fields}
    return operations


def test_every_operation_has_an_attack_probe() -> None:
    operations = schema_operations()
    missing = operations - PROBES.keys()
    assert not missing, f"add an attack probe to tests/test_attacks.py for {sorted(missing)}"
    assert PROBES.keys() == operations, f"stale probes: {sorted(PROBES.keys() - operations)}"
    assert PROBES.keys() >= PUBLIC
    assert GROUP.keys() == PROBES.keys()


@pytest.fixture
async def world(settings: Settings, inbox: Inbox, ollama: StandinState) -> AsyncIterator[World]:
    """The attacked world, on a server without the per-IP limits of the account endpoints."""
    async with (
        serve(settings.model_copy(update=NO_RATE_LIMITS)) as url,
        httpx.AsyncClient(timeout=30) as http,
        connect(settings) as sql,
    ):
        yield await build_world(GraphQLClient(http, url), inbox, settings, ollama, sql)


@pytest.mark.parametrize("group", sorted(set(GROUP.values())))
async def test_attacks(world: World, group: str) -> None:
    """Runs the group's probes in this file's order, each followed by `assert_intact`; a
    failing probe does not stop the others, and all failures are reported together."""
    failures: list[str] = []
    for operation, attack in PROBES.items():
        if GROUP[operation] != group:
            continue
        started, requests = time.perf_counter(), world.requests
        try:
            await attack(world)
            await assert_intact(world)
        except Exception:
            failures.append(f"{operation[0]}.{operation[1]}: {traceback.format_exc(limit=-3)}")
            outcome = "FAILED"
        else:
            outcome = "ok"
        world.log.append(
            f"--- {operation[0]}.{operation[1]} {outcome}: {world.requests - requests} "
            f"requests, {time.perf_counter() - started:.1f} s"
        )
    world.log.append(f"{world.requests} requests")
    print("\n".join(world.log))
    assert not failures, "\n\n".join(failures)


# --- readiness and metrics: not on the public listener -------------------------------------


async def test_readiness_and_metrics_are_not_served_publicly(server_url: str) -> None:
    """No spelling or method of `/readyz` or `/metrics` reaches them on the public listener:
    they live on the operations listener (`rag_gql.operations`)."""
    paths = ["/readyz", "/metrics", "/readyz/", "/metrics/", "/METRICS", "//metrics"]
    paths += ["/metrics?name[]=rag_gql_ingest_queue_depth", "/graphql/static/../../metrics"]
    async with httpx.AsyncClient(timeout=10) as http:
        for path in paths:
            for method in ("GET", "POST", "HEAD"):
                response = await http.request(method, f"{server_url}{path}")
                assert response.status_code == 404, (method, path, response.status_code)
                assert "rag_gql_" not in response.text and "checks" not in response.text


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1 (RFC 5737): only picks the route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


async def test_the_operations_listener_binds_loopback_by_default(
    settings: Settings, ollama: StandinState
) -> None:
    default = Settings.model_fields["metrics_host"].default
    port = free_port()
    update = {"metrics_host": default, "metrics_port": port}
    async with (
        open_services(settings.model_copy(update=update)) as services,
        operations_listener(services) as listener,
        httpx.AsyncClient(timeout=5) as http,
    ):
        assert listener is not None
        assert ipaddress.ip_address(httpx.URL(listener.url).host).is_loopback, listener.url
        assert (await http.get(f"{listener.url}/metrics")).status_code == 200
        outside = _non_loopback_address()
        if outside is not None:  # a machine with loopback only has no other way in
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://{outside}:{port}/metrics")


async def test_the_reranker_sees_only_the_callers_passages_and_cannot_break_a_search(
    settings: Settings, inbox: Inbox, ollama: StandinState
) -> None:
    """The reranker is sent the caller's own candidates only (its workspace), and one that
    fails (a 5xx; scores it cannot send, NaN; extreme scores) never fails the search: the hits
    are the same, in fused order or its own. Malformed bodies: tests/test_rerank.py."""
    reranking = settings.model_copy(
        update=NO_RATE_LIMITS
        | {"rerank_url": settings.ollama_url, "rerank_timeout": 1.0, "rerank_attempts": 1}
    )
    async with serve(reranking) as url, httpx.AsyncClient(timeout=30) as http:
        gql = GraphQLClient(http, url)
        ada = await sign_up(gql, inbox, "ada@example.com")
        mallory = await sign_up(gql, inbox, "mallory@example.com")
        await upload_ok(gql, "secret.pdf", make_pdf(SECRET_PAGES), ada)
        await upload_ok(
            gql, "kites.pdf", make_pdf(["Kites fly in the wind on the beach."]), mallory
        )
        for query in (SECRET_PAGES[0], QUESTION, "kites wind"):
            data = await gql.data(SEARCH_RERANK, {"q": query, "r": True}, token=mallory)
            for secret in SECRET_PAGES:
                assert secret not in json.dumps(data)
            if ollama.last_rerank is not None:
                sent = json.dumps(ollama.last_rerank[1])
                assert not any(secret[:40] in sent for secret in SECRET_PAGES), sent
        hits = await gql.data(SEARCH_RERANK, {"q": "kites wind", "r": True}, token=mallory)
        assert hits["search"][0]["reranked"] is True

        plain = (await gql.data(SEARCH_RERANK, {"q": QUESTION, "r": False}, token=ada))["search"]
        for hostile in (
            lambda q, d: float("nan"),
            lambda q, d: float("inf"),
            lambda q, d: 1e308,
        ):
            ollama.rerank_scorer = hostile
            body = await gql.execute(SEARCH_RERANK, {"q": QUESTION, "r": True}, token=ada)
            assert not body.get("errors"), body
            got = body["data"]["search"]
            assert sorted(h["text"] for h in got) == sorted(h["text"] for h in plain)
            assert [h["text"] for h in got] == [h["text"] for h in plain] or all(
                h["reranked"] for h in got
            )
        ollama.rerank_scorer = None
        ollama.rerank_fail_status = 502
        body = await gql.execute(SEARCH_RERANK, {"q": QUESTION, "r": True}, token=ada)
        assert not body.get("errors"), body
        assert [h["text"] for h in body["data"]["search"]] == [h["text"] for h in plain]
