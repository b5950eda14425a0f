"""The client examples in examples/ run against the real server: each logs in, uploads a file,
follows it to READY over `documentEvents`, and prints an answer token by token as it streams,
then its citation."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.accounts import PASSWORD, sign_up
from tests.support.graphql_client import GraphQLClient
from tests.support.ollama_standin import StandinState
from tests.support.smtp import Inbox

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTES = "Sourdough bread needs flour, water, salt and a lively starter.\n"
QUESTION = "What does sourdough bread need?"
EMAIL = "ada@example.com"
TOKEN_DELAY = 0.1  # seconds between the stand-in's tokens: a stream a reader can watch
RUN_TIMEOUT = 60.0  # seconds; a run takes a few here
INSTALL_TIMEOUT = 300.0  # `npm ci` from the registry (or npm's cache)


async def _run_example(
    command: list[str], *, cwd: Path, env: dict[str, str], ollama: StandinState, status: int = 0
) -> tuple[str, int]:
    """Runs an example; returns its output (stdout and stderr) and how many tokens the stand-in
    had sent when the answer's first text reached the output (-1: none did). Asserts the
    example exits with `status`."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    raw, output = b"", ""
    sent_at_first_text = -1
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            while chunk := await process.stdout.read(4096):
                raw += chunk
                output = raw.decode(errors="replace")  # whole, so no character is split
                _, marker, text = output.partition("answer: ")
                if marker and text and sent_at_first_text < 0:
                    sent_at_first_text = ollama.chat_tokens_sent
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{command} timed out:\n{output}") from None
    assert process.returncode == status, f"{command} exited {process.returncode}:\n{output}"
    return output, sent_at_first_text


async def _prepare(
    gql: GraphQLClient, inbox: Inbox, tmp_path: Path, server_url: str
) -> tuple[Path, dict[str, str]]:
    """Signs up EMAIL (the examples only log in); returns the file to upload and the
    environment that points an example at the server."""
    await sign_up(gql, inbox, EMAIL)
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    # As a user runs it: without PYTHONUNBUFFERED, only the script's own flushes show tokens.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {
        "RAG_GQL_URL": server_url,
        "RAG_GQL_EMAIL": EMAIL,
        "RAG_GQL_PASSWORD": PASSWORD,
    }
    return notes, env


def _assert_flow(output: str, sent_at_first_text: int, ollama: StandinState) -> None:
    """The output shows the login, the upload, READY, the answer printed while it was still
    streaming (the stand-in had not sent all its tokens yet), and the citation."""
    assert f"logged in as {EMAIL}" in output, output
    assert "uploaded notes.md: " in output, output
    assert "document READY" in output, output
    answer = next(line for line in output.splitlines() if line.startswith("answer: "))
    # The stand-in quotes source [1] and cites it.
    assert "Sourdough bread needs flour" in answer, output
    assert answer.endswith("[1]."), output
    assert 0 <= sent_at_first_text < ollama.chat_tokens_sent, (sent_at_first_text, output)
    assert "[1] notes.md, page 1" in output, output


async def test_python_quickstart(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, server_url: str, tmp_path: Path
) -> None:
    notes, env = await _prepare(gql, inbox, tmp_path, server_url)
    ollama.token_delay = TOKEN_DELAY
    script = EXAMPLES / "python" / "quickstart.py"
    command = [sys.executable, str(script), "--file", str(notes), "--question", QUESTION]
    output, sent = await _run_example(command, cwd=tmp_path, env=env, ollama=ollama)
    _assert_flow(output, sent, ollama)


async def _npm_ci(folder: Path) -> None:
    """Installs the Node example's locked dependencies into `folder`."""
    process = await asyncio.create_subprocess_exec(
        "npm",
        "ci",
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(INSTALL_TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode == 0, f"npm ci failed:\n{output.decode(errors='replace')}"


async def test_node_quickstart(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, server_url: str, tmp_path: Path
) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    folder = tmp_path / "node"
    folder.mkdir()
    for name in ("package.json", "package-lock.json", "quickstart.mjs"):
        shutil.copy(EXAMPLES / "node" / name, folder / name)
    await _npm_ci(folder)
    notes, env = await _prepare(gql, inbox, tmp_path, server_url)
    ollama.token_delay = TOKEN_DELAY
    command = [node, "quickstart.mjs", "--file", str(notes), "--question", QUESTION]
    output, sent = await _run_example(command, cwd=folder, env=env, ollama=ollama)
    _assert_flow(output, sent, ollama)


async def test_python_quickstart_says_why_it_stops(
    gql: GraphQLClient, inbox: Inbox, ollama: StandinState, server_url: str, tmp_path: Path
) -> None:
    notes, env = await _prepare(gql, inbox, tmp_path, server_url)
    env["RAG_GQL_PASSWORD"] = "not the password"
    script = EXAMPLES / "python" / "quickstart.py"
    command = [sys.executable, str(script), "--file", str(notes), "--question", QUESTION]
    output, _ = await _run_example(command, cwd=tmp_path, env=env, ollama=ollama, status=1)
    assert output.startswith("error: UNAUTHENTICATED: "), output
    assert "Traceback" not in output, output
