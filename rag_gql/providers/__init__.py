"""Clients for the services rag-gql depends on: Ollama and mail."""
