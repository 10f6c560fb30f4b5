"""Logging set-up for the CLI and services (the library itself only emits events).

Console rendering on a terminal, JSON lines otherwise; always on stderr so that command
output on stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}


def configure_logging(
    fmt: Literal["console", "json"] | None = None, level: str = "info"
) -> None:
    """Configure structlog (and stdlib logging) for a process.

    :param fmt: ``console`` or ``json``; None picks console on a TTY, JSON otherwise.
    :param level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
    """
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(_LEVELS)})")
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
