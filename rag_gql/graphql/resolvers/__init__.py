"""Resolvers by area. Each module defines Query/Mutation/Subscription parts that
`rag_gql.graphql.schema` merges; a resolver unpacks, calls one service, converts."""
