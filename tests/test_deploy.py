"""Deployment: replicas that start together migrate safely; compose.yaml and the Dockerfile
keep the shape the README documents (no Docker engine is needed to check them)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.conftest import TEST_EMBED_DIM, _asyncpg_dsn, with_database

ROOT = Path(__file__).resolve().parents[1]


async def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(postgres_url, name)
    try:
        # As `rag-gql serve` replicas and `rag-gql worker`s do at start-up, on an empty database
        # (processes: alembic's `context` is process-global, so threads would not do).
        env = {**os.environ, "DATABASE_URL": url, "EMBED_DIM": str(TEST_EMBED_DIM)}
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rag_gql.cli", "migrate", env=env, stderr=PIPE
            )
            for _ in range(4)
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*(process.communicate() for process in processes)), timeout=120
        )
        for process, (_, stderr) in zip(processes, results, strict=True):
            assert process.returncode == 0, stderr.decode()
        db = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            versions = await db.fetch("SELECT version_num FROM alembic_version")
        finally:
            await db.close()
        assert len(versions) == 1
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_runs_the_app_the_worker_and_their_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "ollama", "ollama-pull", "mailpit", "migrate", "app", "worker"} <= set(
        services
    )
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg1")
    assert "healthcheck" in services["postgres"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    pull = services["ollama-pull"]["command"][0]
    assert "ollama pull nomic-embed-text" in pull and "ollama pull llama3.2" in pull
    for name in ("app", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["ollama-pull"]["condition"] == "service_completed_successfully"
    assert services["app"]["command"][:2] == ["rag-gql", "serve"]
    assert services["worker"]["command"] == ["rag-gql", "worker"]
    assert services["app"]["environment"]["WORKER_IN_PROCESS"] == "false"
    # The mail catcher receives what the app sends.
    assert services["app"]["environment"]["SMTP_HOST"] == "mailpit"
    assert services["app"]["environment"]["SMTP_PORT"] == "1025"
    # No Docker health check on processes without an HTTP port.
    assert services["worker"]["healthcheck"] == {"disable": True}


def test_dockerfile_is_multi_stage_non_root_with_a_health_check() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and " AS build" in stages[0]
    final = lines[lines.index(stages[1]) :]
    assert any(line.startswith("USER ") and " 0" not in line for line in final)
    assert any(line.startswith("HEALTHCHECK") for line in final)
    assert any("/healthz" in line for line in final)
    # Nothing compiled or installed in the final stage: no build tools reach it.
    assert not any("apt-get" in line or "pip install" in line for line in final)
