"""Database access: engine and transactions, models, migrations, the embedded server."""

from rag_gql.db.session import Database, normalize_url

__all__ = ["Database", "normalize_url"]
