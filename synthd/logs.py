"""structlog set-up: one JSON object a line (orjson) or a console view on a TTY.

Production set-up as structlog's performance guide suggests: a bytes logger,
orjson rendering, cached loggers, and a level filter that drops below-level
calls before any processor runs. A redaction processor replaces any registered
secret (the API keys) wherever it appears in an event, so a key that leaks
into an exception message still never reaches a log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never print this string: it is replaced by ``***`` in every event."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif value is not None and not isinstance(value, int | float | bool):
            event[key] = redact(str(value))
    return event


def configure(
    level: str = "info", log_file: BinaryIO | None = None, console: bool | None = None
) -> None:
    """Configure structlog once, at start-up, before any logger is used."""
    out = log_file if log_file is not None else sys.stdout.buffer
    if console is None:
        console = log_file is None and sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_event,
    ]
    if console:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=False)],
            wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
            logger_factory=structlog.PrintLoggerFactory(sys.stdout),
            cache_logger_on_first_use=True,
        )
        return
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer(serializer=orjson.dumps)],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def configure_to_stderr(level: str = "warning") -> None:
    """For commands whose stdout is their result: JSON log lines on stderr.

    The logger looks ``sys.stderr`` up at every call and is not cached, so it
    follows whatever stderr is current (these commands log a handful of lines).
    """
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _redact_event,
            structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _level(name: str) -> int:
    return int(logging.getLevelNamesMapping()[name.upper()])
