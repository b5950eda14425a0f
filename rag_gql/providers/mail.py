"""Mail backends: SMTP (`aiosmtplib`) or, with no `SMTP_HOST`, the server log.

The log backend is like Django's console email backend: a new user can register and read
the code from the terminal without a mail server.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from rag_gql.config import Settings
from rag_gql.errors import UpstreamUnavailable

log = logging.getLogger(__name__)


class Mailer(Protocol):
    """Sends one plain-text email. Raises `UpstreamUnavailable` when it cannot."""

    async def send(self, *, to: str, subject: str, body: str) -> None: ...


class SmtpMailer:
    """Delivers through an SMTP server, with STARTTLS and login when configured."""

    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host is not None
        self._settings = settings

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """Sends the message; raises `UpstreamUnavailable` on any SMTP failure."""
        s = self._settings
        message = _message(s.mail_from, to, subject, body)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                start_tls=s.smtp_starttls,
                timeout=s.smtp_timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("SMTP delivery to %s failed: %s", s.smtp_host, type(exc).__name__)
            raise UpstreamUnavailable("The mail server could not be reached; try again") from exc


class LogMailer:
    """Writes each message to the server log, clearly marked, instead of sending it."""

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """Logs the whole message at WARNING so it shows with default logging."""
        bar = "-" * 64
        log.warning(
            "\n%s\nEMAIL NOT SENT (no SMTP_HOST set); it would have said:\nTo: %s\n"
            "Subject: %s\n\n%s\n%s",
            bar,
            to,
            subject,
            body,
            bar,
        )


def make_mailer(settings: Settings) -> Mailer:
    """Returns the SMTP mailer when `SMTP_HOST` is set, else the log mailer."""
    return SmtpMailer(settings) if settings.smtp_host else LogMailer()


def _message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message
