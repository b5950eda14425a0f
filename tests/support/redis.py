"""A real `redis-server` (Debian's package) on a free loopback port, for the shared limits."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.serving import free_port

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> str:
    """The `redis-server` executable; skips the test, saying why, when there is none."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    return REDIS_SERVER


@contextmanager
def redis_server(folder: Path, *, timeout: float = 10) -> Iterator[str]:
    """Runs `redis-server` on a free loopback port, without persistence, with its files in
    `folder`; yields its URL (`redis://127.0.0.1:PORT`) once it accepts connections, stops it
    (SIGTERM) on exit.

    Raises:
        RuntimeError: it exited or did not listen within `timeout` seconds.
    """
    executable = require_redis()
    port = free_port()
    args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(folder), "--protected-mode", "no"]
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - a fixed executable
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not listen within {timeout:.0f} s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
