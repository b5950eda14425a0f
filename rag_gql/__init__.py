"""rag-gql: multi-tenant Retrieval-Augmented Generation served as a GraphQL API."""

__version__ = "0.1.0"
