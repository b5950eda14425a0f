"""The principals of the operator's commands (`rag-gql ingest`, bench scripts): a workspace
and a collection named on the command line, without a login (the operator holds the
database's credentials)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from rag_gql.db import Database
from rag_gql.db.models import Role
from rag_gql.repositories import collections, workspaces
from rag_gql.services.access import Principal

NewWorkspace = Callable[[Database, str], Awaitable[Principal]]
"""Makes the workspace of a name no workspace has, and returns its OWNER principal."""


async def operator_principal(
    db: Database, workspace: str, *, new_workspace: NewWorkspace
) -> Principal:
    """An OWNER principal for the operator's commands in `workspace` (an id, or a name).

    A name that no workspace has is made by `new_workspace` (the CLI's: an eval-style
    personal workspace, `cli.eval_principal`).

    Raises:
        ValueError: several workspaces have that name (give the id).
    """
    async with db.transaction() as session:
        try:
            found = await workspaces.get(session, uuid.UUID(workspace))
        except ValueError:
            matches = await workspaces.named(session, workspace)
            if len(matches) > 1:
                raise ValueError(
                    f"{len(matches)} workspaces are named {workspace!r}; give its id"
                ) from None
            found = matches[0] if matches else None
    if found is None:
        return await new_workspace(db, workspace)
    return Principal(workspace_id=found.id, role=Role.OWNER)


async def operator_collection(db: Database, principal: Principal, collection: str) -> uuid.UUID:
    """The id of the workspace's collection `collection` (an id or a name; a new name is made).

    Raises:
        ValueError: an id that is not one of the workspace's collections.
    """
    async with db.transaction(principal.workspace_id) as session:
        try:
            collection_id = uuid.UUID(collection)
        except ValueError:
            found = await collections.get_by_name(
                session, workspace_id=principal.workspace_id, name=collection
            )
            if found is None:
                found = await collections.add(
                    session, workspace_id=principal.workspace_id, name=collection
                )
            return found.id
        if await collections.get(
            session, workspace_id=principal.workspace_id, collection_id=collection_id
        ):
            return collection_id
    raise ValueError(f"no collection {collection} in the workspace")
