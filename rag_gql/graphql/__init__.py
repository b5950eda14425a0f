"""The GraphQL API: schema, types, resolvers, the ASGI view and error mapping."""
