"""GraphQL fuzz run: schemathesis against every query and mutation, as a verified user whose
workspace holds a document; prints the cases, outcomes and any failure (5xx, an error without
`extensions.code`, a stack trace in a message, a masked internal error).

Usage:
    python bench/fuzz.py                  # 1,000 cases, ~1 min on 2 CPUs
    python bench/fuzz.py --cases 5000 --seed 7

Runs everything on this machine: an embedded PostgreSQL (temporary), the rag-gql app served by
uvicorn on loopback with the production GraphQL limits (depth, aliases, tokens, cost), the
Ollama stand-in and an SMTP sink for the sign-up code. Rate limits and per-user caps are raised
(tests/support/limits.py) so that cases reach the resolvers instead of `RATE_LIMITED`. Exits 1
when any case failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_gql.config import Settings  # noqa: E402 - after the path set-up above
from rag_gql.db import migrate  # noqa: E402
from rag_gql.db.embedded import start_embedded  # noqa: E402
from tests.support import fuzz  # noqa: E402
from tests.support.accounts import sign_up  # noqa: E402
from tests.support.graphql_client import GraphQLClient  # noqa: E402
from tests.support.limits import raised_limits  # noqa: E402
from tests.support.ollama_standin import OllamaStandin, StandinState  # noqa: E402
from tests.support.serving import serve  # noqa: E402
from tests.support.smtp import SmtpSink  # noqa: E402

DIM = 256
SAMPLE = ROOT / "tests" / "data" / "formats" / "sample.md"


async def run(cases: int, seed: int) -> fuzz.Report:
    """Starts the stack, signs a user up, uploads a document, fuzzes; returns the report."""
    folder = Path(tempfile.mkdtemp(prefix="rag-gql-fuzz-"))
    pg = start_embedded(folder / "pg", delete_on_stop=True)
    ollama = OllamaStandin(StandinState(dim=DIM)).start()
    smtp = SmtpSink().start()
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, embed_dim=DIM)
        settings = Settings(
            _env_file=None,
            database_url=pg.url,
            data_dir=folder / "data",
            ollama_url=ollama.url,
            embed_dim=DIM,
            jwt_secret="fuzz-" + "x" * 40,
            password_hash_profile="CHEAPEST",  # noqa: S106 - a profile name, not a password
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            parse_processes=0,
        ).model_copy(update=raised_limits())
        async with serve(settings) as url, httpx.AsyncClient(timeout=60) as http:
            gql = GraphQLClient(http, url)
            token = await sign_up(gql, smtp.inbox, "fuzz@example.com")
            response = await gql.upload(SAMPLE.name, SAMPLE.read_bytes(), token=token)
            status = response.json()["data"]["uploadDocument"]["status"]
            print(f"server {url}; user fuzz@example.com with {SAMPLE.name} ({status})")
            print(
                "rate limits raised to 1000000/minute and per-user caps to 1000000 "
                "(tests/support/limits.py); GraphQL limits at production defaults"
            )
            return await asyncio.to_thread(fuzz.run, url, token, cases=cases, seed=seed)
    finally:
        smtp.stop()
        ollama.stop()
        pg.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=1000, help="least cases (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    args = parser.parse_args()
    report = asyncio.run(run(args.cases, args.seed))
    print(report.summary())
    print("cases per operation: " + ", ".join(f"{k} {v}" for k, v in report.by_operation.items()))
    if report.failures:
        print(report.describe_failures(limit=20))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
