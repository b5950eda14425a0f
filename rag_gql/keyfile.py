"""A random secret generated once into a file, and read from it by every later start.

The file is written atomically (POSIX): a temp file in the same directory, created with mode
0600, written and fsynced, renamed over the target with `os.replace`, then the directory
fsynced, so a crash leaves either no file or a whole one. Processes that start together take
an exclusive `flock` on the directory before they write: the first writes, the others read
its secret. A file shorter than `min_bytes` (an older release could leave an empty one when
it crashed between creating and writing it) is ours: it is generated again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
from pathlib import Path

SECRET_RANDOM_BYTES = 48
"""Random bytes of a generated secret (384 bits), written as 64 URL-safe characters."""


def read_or_create_secret(path: Path, *, min_bytes: int) -> bytes:
    """Returns the secret in `path` (stripped of surrounding whitespace), generating it first
    when the file is missing or holds fewer than `min_bytes` bytes.

    Raises:
        OSError: the directory cannot be created, locked or written, or the file read.
    """
    existing = _read(path, min_bytes)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)  # released when `directory` is closed
        existing = _read(path, min_bytes)  # another process may have written it meanwhile
        if existing is not None:
            return existing
        secret = secrets.token_urlsafe(SECRET_RANDOM_BYTES).encode()
        _write_atomically(path, secret, directory)
        return secret
    finally:
        os.close(directory)


def _read(path: Path, min_bytes: int) -> bytes | None:
    """The file's secret, or None when it is missing or too short to be one of ours."""
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    return secret if len(secret) >= min_bytes else None


def _write_atomically(path: Path, data: bytes, directory: int) -> None:
    # mkstemp creates the file with mode 0600 (O_EXCL): the secret is never readable by others.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    os.fsync(directory)  # the rename itself survives a power cut
