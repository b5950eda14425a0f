"""The server's secrets: a JWT_SECRET under 32 bytes refuses the start, the generated one is
written atomically with mode 0600 and regenerated when a crash left it short, processes that
start together agree on it, and the one-time codes' HMAC key is derived from it (HKDF)."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from rag_gql.config import Settings
from tests.support.accounts import sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.processes import ROOT, app_environment
from tests.support.serving import free_port, serve_client
from tests.support.smtp import Inbox
from tests.support.sql import connect

REQUEST_RESET = "mutation($e: String!) { requestPasswordReset(email: $e) }"
RESET = (
    "mutation($e: String!, $c: String!, $n: String!) "
    "{ resetPassword(email: $e, code: $c, newPassword: $n) }"
)
LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
NEW_PASSWORD = "purple velvet antelope dances"


# --- JWT_SECRET ---------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "x" * 31, "é" * 15])
def test_a_short_jwt_secret_is_refused(secret: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"JWT_SECRET has .* bytes; it needs at least 32"):
        Settings(_env_file=None, data_dir=tmp_path, jwt_secret=secret)
    assert not (tmp_path / "jwt_secret").exists()  # nor does a generated one stand in for it


def test_a_jwt_secret_of_32_bytes_is_taken_as_it_is(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, jwt_secret="é" * 16)
    assert settings.resolved_jwt_secret() == ("é" * 16).encode()
    assert not (tmp_path / "jwt_secret").exists()


@pytest.mark.parametrize("secret", ["", "s" * 31], ids=["empty", "31 bytes"])
def test_serve_refuses_to_start_with_a_short_jwt_secret(secret: str, tmp_path: Path) -> None:
    """`rag-gql serve` exits at once with status 2 and a message naming JWT_SECRET; the
    database URL leads nowhere, so a server that went on would fail otherwise."""
    env = app_environment(
        {
            "JWT_SECRET": secret,
            "DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": f"postgresql://rag:rag@127.0.0.1:{free_port()}/nowhere",
        }
    )
    done = subprocess.run(  # noqa: S603 - our own module, a fixed argument list
        [sys.executable, "-m", "rag_gql.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "JWT_SECRET" in done.stderr and "at least 32" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "data" / "jwt_secret").exists()


# --- the generated secret -----------------------------------------------------------------------


def generated(data_dir: Path) -> bytes:
    return Settings(_env_file=None, data_dir=data_dir).resolved_jwt_secret()


@pytest.mark.parametrize("left", [b"", b"\n", b"k" * 31], ids=["empty", "newline", "31 bytes"])
def test_a_secret_file_left_short_by_a_crash_is_generated_again(
    left: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "jwt_secret"
    path.write_bytes(left)
    secret = generated(tmp_path)
    assert len(secret) >= 32
    assert path.read_bytes().strip() == secret
    assert generated(tmp_path) == secret  # and kept from then on
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_generated_secret_is_private_and_written_whole(tmp_path: Path) -> None:
    previous = os.umask(0)  # even where files are created world-readable by default
    try:
        secret = generated(tmp_path / "data")
    finally:
        os.umask(previous)
    path = tmp_path / "data" / "jwt_secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == secret
    assert os.listdir(path.parent) == ["jwt_secret"]  # no temp file left behind


def test_a_crash_before_the_rename_leaves_no_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(source: object, target: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        generated(tmp_path)
    assert os.listdir(tmp_path) == []  # neither a short secret nor the temp file
    monkeypatch.undo()
    assert len(generated(tmp_path)) >= 32


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    """Threads stand in for processes: `flock` locks belong to open files, not processes."""
    starts = 8
    barrier = threading.Barrier(starts)
    found: list[bytes] = []

    def start() -> None:
        barrier.wait()
        found.append(generated(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(starts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == starts and len(set(found)) == 1, found
    assert len(found[0]) >= 32
    assert (tmp_path / "jwt_secret").read_bytes() == found[0]


# --- the one-time codes' key --------------------------------------------------------------------


async def test_the_code_hmac_key_is_derived_from_the_jwt_secret_and_stable(
    gql: GraphQLClient, inbox: Inbox, settings: Settings
) -> None:
    """Codes are HMAC-SHA256'd with HKDF-SHA256(JWT secret, info "rag-gql otp v1") (RFC 5869),
    not the JWT secret itself; a server started afresh derives the same key and takes a code
    another one sent."""
    email = "ada@example.com"
    await sign_up(gql, inbox, email)
    before = len(inbox.to(email))
    await gql.data(REQUEST_RESET, {"e": email})
    code = await inbox.wait_for_code(email, after=before)
    async with connect(settings) as conn:
        stored = await conn.fetchval("SELECT code_hash FROM email_code WHERE purpose = 'reset'")

    secret = settings.resolved_jwt_secret()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"rag-gql otp v1").derive(
        secret
    )
    assert key != secret
    assert stored == hmac.new(key, code.encode(), hashlib.sha256).hexdigest()
    assert stored != hmac.new(secret, code.encode(), hashlib.sha256).hexdigest()

    async with serve_client(settings) as restarted:
        await restarted.data(RESET, {"e": email, "c": code, "n": NEW_PASSWORD})
        await restarted.data(LOGIN, {"e": email, "p": NEW_PASSWORD})
