"""Collections: named groups of documents inside a workspace."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from rag_gql.db import Database
from rag_gql.db.models import Collection
from rag_gql.errors import Conflict, InvalidInput, NotFound
from rag_gql.repositories import collections
from rag_gql.services.access import Action, Principal

MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class CollectionView:
    """A collection and how many documents it holds."""

    collection: Collection
    document_count: int


class CollectionService:
    """Creates, lists and deletes the workspace's collections."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def create(self, principal: Principal, name: str) -> CollectionView:
        """Creates a collection in the caller's workspace.

        Raises:
            Forbidden: VIEWER.
            InvalidInput: empty or over-long name.
            Conflict: the workspace already has a collection with this name.
        """
        principal.require(Action.WRITE)
        name = " ".join(name.split())
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"A collection name has 1 to {MAX_NAME_LENGTH} characters")
        try:
            async with self._db.transaction(principal.workspace_id) as session:
                collection = await collections.add(
                    session, workspace_id=principal.workspace_id, name=name
                )
        except IntegrityError as exc:
            raise Conflict(f"A collection named {name!r} already exists") from exc
        return CollectionView(collection, 0)

    async def list_all(self, principal: Principal) -> list[CollectionView]:
        """The workspace's collections, by name."""
        principal.require(Action.READ)
        async with self._db.transaction(principal.workspace_id) as session:
            rows = await collections.list_all(session, principal.workspace_id)
        return [CollectionView(c, n) for c, n in rows]

    async def delete(self, principal: Principal, collection_id: uuid.UUID) -> None:
        """Deletes the collection with its documents and chunks, in one transaction.

        Raises:
            Forbidden: VIEWER.
            NotFound: no such collection in the workspace.
        """
        principal.require(Action.WRITE)
        async with self._db.transaction(principal.workspace_id) as session:
            deleted = await collections.delete_collection(
                session, workspace_id=principal.workspace_id, collection_id=collection_id
            )
        if not deleted:
            raise NotFound("Collection not found")

    async def check(self, principal: Principal, collection_id: uuid.UUID) -> None:
        """Raises `NotFound` unless the collection is in the caller's workspace."""
        async with self._db.transaction(principal.workspace_id) as session:
            found = await collections.get(
                session, workspace_id=principal.workspace_id, collection_id=collection_id
            )
        if found is None:
            raise NotFound("Collection not found")
