"""A workspace's own HNSW index built on demand, as the `vector_index` job builds it."""

from __future__ import annotations

import uuid

from rag_gql.config import Settings
from rag_gql.repositories import vector_indexes
from tests.support.sql import connect


async def build_index(settings: Settings, workspace_id: uuid.UUID) -> str:
    """Builds the workspace's vector index (as the table's owner); returns its name."""
    async with connect(settings) as conn:
        await vector_indexes.build(conn, workspace_id=workspace_id, maintenance_work_mem="64MB")
    return vector_indexes.index_name(workspace_id)


def hnsw_scan(workspace_id: uuid.UUID) -> str:
    """What EXPLAIN shows when a statement reads the workspace's vector index."""
    return f"Index Scan using {vector_indexes.index_name(workspace_id)} on chunk"
