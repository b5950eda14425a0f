"""Recent query embeddings, so a repeated search skips the embedding call."""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Sequence

from cachetools import TTLCache


class QueryEmbeddingCache:
    """The embeddings of recent queries, per workspace, least recently used out first, each
    kept at most `ttl` seconds (`cachetools.TTLCache`).

    A search repeated with another filter, mode or `k`, and the answer asked after a search
    of the same words, reuse the vector instead of a round trip to Ollama (milliseconds to
    tens of milliseconds each). Keys are (workspace id, query text): a shared entry would
    answer one tenant faster when another had just searched the same words, telling it so.
    Vectors are kept as float32 arrays (1.5 KB at 384 dimensions, 3 KB at 768), the
    precision the database stores them at. `size` 0 keeps nothing.
    """

    def __init__(self, size: int, ttl: float) -> None:
        self._entries: TTLCache[tuple[uuid.UUID, str], array[float]] | None = (
            TTLCache(maxsize=size, ttl=ttl) if size > 0 else None
        )

    def get(self, workspace_id: uuid.UUID, query: str) -> list[float] | None:
        """The query's vector when it is kept, else None."""
        if self._entries is None:
            return None
        found = self._entries.get((workspace_id, query))
        return None if found is None else found.tolist()

    def put(self, workspace_id: uuid.UUID, query: str, vector: Sequence[float]) -> None:
        """Keeps `vector` as the query's embedding in the workspace."""
        if self._entries is not None:
            self._entries[(workspace_id, query)] = array("f", vector)
