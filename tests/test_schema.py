"""`schema.graphql` is the printed schema; this keeps the two equal."""

from __future__ import annotations

from pathlib import Path

from graphql import GraphQLObjectType, build_schema
from graphql.utilities.print_schema import print_input_value
from strawberry.printer import print_schema

from rag_gql.graphql.schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"


def test_schema_file_is_in_sync() -> None:
    printed = print_schema(schema) + "\n"
    assert SCHEMA_FILE.read_text() == printed, (
        "schema.graphql is stale; regenerate it with "
        "`rag-gql export-schema --output schema.graphql`"
    )


def signatures(sdl: str) -> str:
    """The SDL's root fields, one a line, as `name(arg: Type = default, ...)`: described
    arguments print one a line in the SDL, and the contract below is about names and types."""
    built = build_schema(sdl)
    lines: list[str] = []
    for root in (built.query_type, built.mutation_type, built.subscription_type):
        assert isinstance(root, GraphQLObjectType)
        for name, field in root.fields.items():
            args = ", ".join(
                print_input_value(arg_name, arg) for arg_name, arg in field.args.items()
            )
            lines.append(f"{name}({args}): {field.type}" if args else f"{name}: {field.type}")
    return "\n".join(lines)


def test_contract_names_exist() -> None:
    """The operation names in the skeleton issue are a contract with clients."""
    sdl = SCHEMA_FILE.read_text()
    operations = signatures(sdl)
    assert "union AnswerEvent = AnswerSources | AnswerToken | AnswerDone" in sdl
    for needle in (
        "register(email: String!, password: String!)",
        "verifyEmail(email: String!, code: String!, password: String!)",
        "login(email: String!, password: String!)",
        "uploadDocument(file: Upload!",
        "documents(first: Int",
        "document(id: ID!)",
        "deleteDocument(id: ID!)",
        "search(query: String!, k: Int = 5",
        "answer(question: String!, k: Int = 5",
    ):
        assert needle in operations, needle
