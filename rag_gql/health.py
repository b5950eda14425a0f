"""Readiness: the database answers, its migrations are at head, Ollama answers and has the
models pulled.

`/readyz` (on the operations listener, `rag_gql.operations`) answers 200 when every check
passes and 503 otherwise, with a JSON body::

    {"status": "ready" | "unavailable",
     "checks": {"database": {"ok": true},
                "migrations": {"ok": true, "current": ["0005"], "head": ["0005"]},
                "ollama": {"ok": false, "error": "upstream_unavailable"}}}

The Ollama check fails with `error`: `timeout`, `upstream_unavailable` (unreachable),
`circuit_open` (it failed repeatedly and calls are being refused: see
`rag_gql.providers.ollama`), `upstream_error` (it answered with an error), or
`models_missing` (with `missingModels`: `ollama pull` them).

With OCR on (`OCR` not `off`), the body also says whether Tesseract's language data was found
at start-up, without counting in the status (a missing OCR fails only the documents that need
it, with a message saying what to install)::

    "capabilities": {"ocr": {"available": false, "error": "tesseract_missing",
                             "missingLanguages": ["eng"]}}

Errors are named, not described: the endpoint is unauthenticated, and the details (hosts,
driver messages) go to the log instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from alembic.script import ScriptDirectory

from rag_gql.db import Database
from rag_gql.db.migrate import alembic_config
from rag_gql.errors import DomainError
from rag_gql.providers.ollama import CircuitOpen, OllamaClient
from rag_gql.repositories import catalog
from rag_gql.services.ocr import OcrAvailability

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0
"""Seconds each check may take before it counts as failed."""


def migration_heads() -> frozenset[str]:
    """The head revisions of the migrations shipped with this code (reads the scripts)."""
    script = ScriptDirectory.from_config(alembic_config("", embed_dim=0))
    return frozenset(script.get_heads())


async def readiness(
    db: Database, ollama: OllamaClient, heads: frozenset[str], ocr: OcrAvailability | None = None
) -> tuple[bool, dict[str, Any]]:
    """Runs the checks concurrently; returns (all passed, the JSON body above). `ocr`: what
    start-up found of Tesseract (None: OCR is off)."""
    database, ollama_check = await asyncio.gather(
        _database(db, heads), _ollama(ollama), return_exceptions=False
    )
    checks = {**database, "ollama": ollama_check}
    ready = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": checks}
    if ocr is not None:
        found: dict[str, Any] = {"available": ocr.available}
        if not ocr.available:
            found |= {"error": "tesseract_missing", "missingLanguages": list(ocr.missing_languages)}
        body["capabilities"] = {"ocr": found}
    return ready, body


async def _database(db: Database, heads: frozenset[str]) -> dict[str, dict[str, Any]]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), db.transaction() as session:
            current = await catalog.applied_migrations(session)
    except TimeoutError:
        log.warning("readiness: the database did not answer within %.0f s", CHECK_TIMEOUT)
        return {"database": {"ok": False, "error": "timeout"}, "migrations": {"ok": False}}
    except Exception as exc:  # any failure means "not ready"; the log says which
        log.warning("readiness: the database check failed: %r", exc)
        return {
            "database": {"ok": False, "error": type(exc).__name__},
            "migrations": {"ok": False},
        }
    migrations = {"ok": set(current) == heads, "current": current, "head": sorted(heads)}
    return {"database": {"ok": True}, "migrations": migrations}


async def _ollama(ollama: OllamaClient) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            models = await ollama.ping()
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except CircuitOpen:
        return {"ok": False, "error": "circuit_open"}
    except DomainError as exc:
        log.warning("readiness: Ollama check failed: %s", exc)
        return {"ok": False, "error": exc.code.lower()}
    wanted = {ollama.embed_model, ollama.chat_model}
    have = {name.removesuffix(":latest") for name in models} | set(models)
    missing = sorted(wanted - have)
    if missing:
        log.warning("readiness: Ollama lacks the models %s (ollama pull them)", missing)
        return {"ok": False, "error": "models_missing", "missingModels": missing}
    return {"ok": True, "missingModels": []}
