"""Every part of the schema a user sees in GraphiQL's docs pane has a description: named types
(but GraphQL's own scalars and the introspection types), fields, arguments, input fields and
enum values. The walk is over the built schema, so nothing new can land undescribed."""

from __future__ import annotations

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    specified_scalar_types,
)

from rag_gql.graphql.schema import schema


def undescribed(graphql_schema: GraphQLSchema) -> list[str]:
    """Schema coordinates (`Type`, `Type.field`, `Type.field(arg:)`, `Enum.VALUE`) of every
    part of the schema without a non-blank description, in schema order."""
    missing: list[str] = []

    def check(coordinate: str, description: str | None) -> None:
        if not (description or "").strip():
            missing.append(coordinate)

    for name, named in sorted(graphql_schema.type_map.items()):
        if name.startswith("__") or name in specified_scalar_types:
            continue
        check(name, _description(named))
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in named.fields.items():
                check(f"{name}.{field_name}", field.description)
                for arg_name, arg in field.args.items():
                    check(f"{name}.{field_name}({arg_name}:)", arg.description)
        elif isinstance(named, GraphQLInputObjectType):
            for field_name, input_field in named.fields.items():
                check(f"{name}.{field_name}", input_field.description)
        elif isinstance(named, GraphQLEnumType):
            for value_name, value in named.values.items():
                check(f"{name}.{value_name}", value.description)
    return missing


def _description(named: GraphQLNamedType) -> str | None:
    return named.description


def test_every_part_of_the_schema_is_described() -> None:
    missing = undescribed(schema._schema)
    assert not missing, f"{len(missing)} parts of the schema have no description:\n" + "\n".join(
        f"  {coordinate}" for coordinate in missing
    )
