"""Deployment: replicas that start together migrate safely; compose.yaml and the Dockerfile
keep the shape docs/operations.md documents (no Docker engine is needed to check them)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Iterator
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
    # The worker has no public port: its health check asks its operations listener.
    check = " ".join(services["worker"]["healthcheck"]["test"])
    assert "http://127.0.0.1:9464/healthz" in check


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


def _literal_secrets(value: object, path: str = "") -> Iterator[str]:
    """Where a password-like key of compose.yaml holds a literal (not a `${...:?}`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _literal_secrets(item, f"{path}.{key}")
            named = re.search(r"PASSWORD|SECRET|TOKEN", str(key))
            if named and isinstance(item, str) and item and not REQUIRED.fullmatch(item):
                yield f"{path}.{key}"
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _literal_secrets(item, f"{path}[{n}]")
    elif isinstance(value, str) and "://" in value:
        # A URL's password: postgresql://user:password@host
        for password in re.findall(r"://[^:/@]+:([^@]+)@", value):
            if not REQUIRED.fullmatch(password):
                yield path


REQUIRED = re.compile(r"\$\{[A-Z_]+:\?[^}]*\}")
"""A variable compose refuses to start without."""


def test_compose_publishes_nothing_secret_and_holds_no_password(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # Mailpit shows every verification, reset and invitation code: this machine only.
    assert services["mailpit"]["ports"] == ["127.0.0.1:8025:8025"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert name == "app" or str(port).startswith("127.0.0.1:"), (name, port)
    # Readiness and metrics: the containers' loopback, published nowhere.
    for name in ("app", "worker"):
        environment = services[name]["environment"]
        assert (environment["METRICS_HOST"], environment["METRICS_PORT"]) == ("127.0.0.1", "9464")
        assert not any("9464" in str(port) for port in services[name].get("ports", []))
    assert list(_literal_secrets(compose)) == []
    text = (ROOT / "compose.yaml").read_text()
    assert ":-rag}" not in text and "POSTGRES_PASSWORD: rag" not in text
    # The app connects as `rag`, which the init script makes an owner, not a superuser.
    url = services["app"]["environment"]["DATABASE_URL"]
    assert url.startswith("postgresql://rag:")
    assert services["postgres"]["environment"]["POSTGRES_USER"] != "rag"  # the superuser
    init = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init == ["./deploy/postgres-init.sh:/docker-entrypoint-initdb.d/10-rag-user.sh:ro"]
    script = (ROOT / "deploy" / "postgres-init.sh").read_text()
    assert "CREATE ROLE rag LOGIN CREATEROLE NOSUPERUSER" in script
    assert "OWNER TO rag" in script


def _requirement_floor(name: str) -> tuple[int, ...]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^]]*\])?>=([0-9.]+)(,.*)?", requirement)
        if match:
            return tuple(int(part) for part in match.group(2).split("."))
    raise AssertionError(f"{name} has no floor in pyproject.toml")


def test_dependency_floors_exclude_known_advisories() -> None:
    assert _requirement_floor("strawberry-graphql") >= (0, 327, 2)
    assert _requirement_floor("starlette") >= (0, 49, 1)
    assert _requirement_floor("joserfc") >= (1, 8)


def test_the_image_and_ci_install_the_pinned_versions() -> None:
    pins = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert all(version for version in pins.values())
    for name in ("strawberry-graphql", "starlette", "joserfc", "uvicorn", "sqlalchemy"):
        assert name in pins, name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt" in dockerfile
    assert "pip install -c constraints.txt -e '.[otel,redis]'" in dockerfile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e '.[dev]'" in ci
