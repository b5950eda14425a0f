"""`schema.graphql` is the printed schema; this keeps the two equal."""

from __future__ import annotations

from pathlib import Path

from strawberry.printer import print_schema

from rag_gql.graphql.schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"


def test_schema_file_is_in_sync() -> None:
    printed = print_schema(schema) + "\n"
    assert SCHEMA_FILE.read_text() == printed, (
        "schema.graphql is stale; regenerate it with "
        "`rag-gql export-schema --output schema.graphql`"
    )


def test_contract_names_exist() -> None:
    """The operation names in the skeleton issue are a contract with clients."""
    sdl = SCHEMA_FILE.read_text()
    for needle in (
        "register(email: String!, password: String!)",
        "verifyEmail(email: String!, code: String!)",
        "login(email: String!, password: String!)",
        "uploadDocument(file: Upload!",
        "documents(first: Int",
        "document(id: ID!)",
        "deleteDocument(id: ID!)",
        "search(query: String!, k: Int = 5",
        "answer(question: String!, k: Int = 5",
        "union AnswerEvent = AnswerSources | AnswerToken | AnswerDone",
    ):
        assert needle in sdl, needle
