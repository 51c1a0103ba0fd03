"""Structured logging: JSON lines for services, readable lines for the CLI.

Every event is one line. Values under keys that name secrets are replaced before rendering, so
a password passed by mistake never reaches the journal.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SECRET_KEYS = frozenset(
    {"password", "passwd", "pass", "secret", "password_hash", "resp", "auth_pass", "token"}
)


def _redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "[redacted]"
    return event


class _Stderr:
    """Writes to whatever `sys.stderr` is at the time of writing (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Set up structlog once per process (services: json; CLI: console on stderr)."""
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per line (PrintLogger writes the newline separately): stderr to a file or
        # journald's pipe is write-through, and the intake's worker processes share it, so two
        # writes per line let their lines interleave.
        logger_factory=structlog.WriteLoggerFactory(stream or _Stderr()),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(component=name.removeprefix("encimap."))
