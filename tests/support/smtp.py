"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import asyncio
import email
import re
import socket
import time
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

CODE = re.compile(r"\b(\d{6})\b")


class Inbox:
    """aiosmtpd handler: stores each delivered message, parsed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Message]:
        """Messages delivered to `address`, oldest first."""
        return [m for m in self.messages if address in m["X-Envelope-To"]]

    async def wait_for(self, address: str, *, after: int = 0, timeout: float = 5.0) -> Message:
        """Waits for message number `after`+1 to `address` and returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.to(address)
            if len(messages) > after:
                return messages[after]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no email reached {address}")

    async def wait_for_code(self, address: str, *, after: int = 0, timeout: float = 5.0) -> str:
        """Waits for message number `after`+1 to `address` and returns the 6-digit code in it."""
        message = await self.wait_for(address, after=after, timeout=timeout)
        body = message.get_payload(decode=True)
        assert isinstance(body, bytes)
        found = CODE.search(body.decode())
        assert found, body
        return found.group(1)


class SmtpSink:
    """Runs `Inbox` behind aiosmtpd's threaded controller on 127.0.0.1."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        """Starts serving; returns self."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stops serving."""
        self._controller.stop()
