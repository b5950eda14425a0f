"""Headless Chromium driven over the DevTools protocol (no driver or browser download: the
system's `chromium`, e.g. Debian's package, and the `websockets` the tests already use).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Json = dict[str, Any]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, else None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Page:
    """One browser tab; `events` keeps every protocol event received, in order."""

    ws: ClientConnection
    events: list[Json] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[Json]] = field(default_factory=dict)

    async def send(self, method: str, **params: Any) -> Json:
        """Calls a DevTools method; returns its `result`.

        Raises:
            RuntimeError: the browser answered with an error.
        """
        number = next(self._ids)
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: Json = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 30.0) -> Any:
        """Polls `expression` until it is truthy; returns its value.

        Raises:
            TimeoutError: still falsy after `timeout` seconds.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"still falsy after {timeout} s: {expression}")
            await asyncio.sleep(0.1)

    async def _read(self) -> None:
        async for raw in self.ws:
            message: Json = json.loads(raw)
            number = message.get("id")
            if isinstance(number, int) and number in self._waiting:
                self._waiting.pop(number).set_result(message)
            else:
                self.events.append(message)


@contextlib.asynccontextmanager
async def open_page(browser: str) -> AsyncIterator[Page]:
    """Starts headless `browser` in a fresh profile; yields a blank tab; kills it on exit."""
    with tempfile.TemporaryDirectory(prefix="rag-gql-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            browser,
            "--headless=new",
            "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        drain: asyncio.Task[None] | None = None
        try:
            browser_url = await asyncio.wait_for(_devtools_url(process), 30)
            # Keep reading stderr, or a full pipe would block the browser.
            drain = asyncio.create_task(_drain(process))
            async with connect(browser_url, max_size=None) as browser_ws:
                root = Page(browser_ws)
                reader = asyncio.create_task(root._read())
                target = await root.send("Target.createTarget", url="about:blank")
                page_url = re.sub(
                    r"/devtools/browser/.*", f"/devtools/page/{target['targetId']}", browser_url
                )
                async with connect(page_url, max_size=None) as page_ws:
                    page = Page(page_ws)
                    page_reader = asyncio.create_task(page._read())
                    try:
                        yield page
                    finally:
                        page_reader.cancel()
                reader.cancel()
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            if drain is not None:
                await drain


async def _devtools_url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    while True:
        line = await process.stderr.readline()
        if not line:
            raise RuntimeError("the browser exited before it listened for DevTools")
        found = _LISTENING.search(line.decode(errors="replace"))
        if found:
            return found.group(1)


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    while await process.stderr.read(65536):
        pass
