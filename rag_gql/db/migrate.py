"""Applies the alembic migrations programmatically (what `rag-gql serve` does at start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(url: str, *, embed_dim: int) -> Config:
    """Returns the project's alembic config aimed at `url`, creating `vector(embed_dim)`."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    config.attributes["embed_dim"] = embed_dim
    return config


def upgrade(url: str, *, embed_dim: int) -> None:
    """Migrates the database at `url` to the newest revision.

    Blocking (it runs its own event loop): call it before the server's loop starts, or from a
    worker thread.
    """
    command.upgrade(alembic_config(url, embed_dim=embed_dim), "head")
