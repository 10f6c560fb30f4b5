"""What counts as trouble with Redis, and the one policy every long-running loop follows.

This module is the only place that names connection errors. Everything that loops for the
life of a process (reading, acking, leasing, reclaiming, retrying, heartbeats, coordinator
jobs, ``tail -f``) catches ``Exception`` and hands it to ``ride_out``:

- connection trouble (refused, reset, timed out, a frozen server) and **transient server
  replies** (``OOM``, ``BUSY``, ``LOADING``, ``READONLY``, ``MASTERDOWN``, ``TRYAGAIN``,
  ``CLUSTERDOWN``, ``NOREPLICAS``, ``MISCONF``) are logged as a warning, and the loop
  backs off (exponential, jittered, capped) and resumes;
- anything else is a bug or a setup problem (a denied command, a wrong password): it is
  logged as an error with its traceback, and the loop still backs off and resumes.

Nothing here ever ends a loop: cancellation is a ``BaseException`` and passes through.
"""

from __future__ import annotations

from typing import Any

import anyio
from redis import exceptions as rexc

from ..errors import BusConnectionError, BusResponseError
from .backoff import Backoff

__all__ = [
    "CONNECTION_ERRORS",
    "describe",
    "is_connection_error",
    "is_transient",
    "ride_out",
]

#: Every exception type that means "the connection to Redis is not working right now".
#: The builtin ``ConnectionError`` and ``TimeoutError`` are ``OSError`` subclasses;
#: redis-py's ``ConnectionError`` and ``TimeoutError`` are not, hence all four roots.
#: redis-py's ``AuthenticationError`` derives from its ``ConnectionError`` but is a
#: setup problem, not an outage: ``is_connection_error`` tells them apart.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    OSError,
    BusConnectionError,
)

#: First word of server error replies that go away by themselves (memory freed, a script
#: finished, a dataset loaded, a failover completed, a slot migrated, disk fixed).
TRANSIENT_REPLIES = frozenset({
    "OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
    "NOREPLICAS", "MISCONF", "UNBLOCKED", "FAILOVER",
})

_SETUP_ERRORS = (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError)


def is_connection_error(exc: BaseException) -> bool:
    """True for an outage: the server is unreachable, gone, frozen or still loading."""
    if isinstance(exc, _SETUP_ERRORS):
        return False
    cause = exc.__cause__
    if isinstance(exc, BusConnectionError | BusResponseError) and cause is not None:
        return cause is not exc and is_connection_error(cause)
    return isinstance(exc, CONNECTION_ERRORS)


def _reply_word(exc: BaseException) -> str:
    """The transient reply word an error carries, or ''.

    Replies come bare (``OOM command not allowed ...``), inside a script error
    (``... @user_script:12: -OOM ...``) or inside a pipeline error (``Command # 1 (XADD
    k ...) of pipeline caused error: ('BUSY ...``); the command text before the reply
    (with key names in it) is never looked at.
    """
    try:
        text = str(exc)
    except Exception:
        return ""
    _, marker, reply = text.partition("caused error: ")
    candidates = [reply.lstrip("('\"")] if marker else [text]
    candidates += [part for part in candidates[0].split(" -")[1:]]
    for candidate in candidates:
        word = candidate.lstrip("-").split(" ", 1)[0].upper()
        if word in TRANSIENT_REPLIES:
            return word
    return ""


def is_transient(exc: BaseException) -> bool:
    """True when waiting and trying again is the right answer to ``exc``."""
    if is_connection_error(exc):
        return True
    if isinstance(exc, rexc.BusyLoadingError | rexc.ReadOnlyError | rexc.OutOfMemoryError |
                  rexc.TryAgainError | rexc.ClusterDownError):
        return True
    if isinstance(exc, rexc.ResponseError | BusResponseError):
        if _reply_word(exc):
            return True
        cause = exc.__cause__
        return cause is not None and cause is not exc and is_transient(cause)
    return False


def describe(exc: BaseException, limit: int = 500) -> str:
    """``str(exc)`` for logs and dead letters; never raises, even for hostile exceptions."""
    try:
        text = str(exc)
    except BaseException:  # a __str__ that raises (or worse) must not take us down
        text = ""
    if not isinstance(text, str):
        text = ""
    if not text:
        try:
            text = type(exc).__name__
        except BaseException:
            text = "exception"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(exc: BaseException) -> str:
    """The exception's class name, safe against odd classes."""
    try:
        name = type(exc).__name__
    except BaseException:
        return "Exception"
    return name if isinstance(name, str) and name else "Exception"


async def ride_out(exc: Exception, backoff: Backoff, log: Any, event: str, **context: Any) -> float:
    """Log ``exc`` as the policy says, then sleep the next backoff delay; returns it.

    :param event: what the loop was doing (``"read"``, ``"ack"``, ``"heartbeat"``...); the
        log events are ``<event>_deferred`` for transient trouble and ``<event>_failed``
        otherwise.
    """
    delay = backoff.next()
    if is_transient(exc):
        log.warning(f"{event}_deferred", error=describe(exc), error_type=type_name(exc),
                    retry_in=round(delay, 3), **context)
    elif isinstance(exc, _SETUP_ERRORS):
        log.error(f"{event}_failed", error=describe(exc), error_type=type_name(exc),
                  retry_in=round(delay, 3), hint="check the credentials and ACL of this "
                  "process's Redis user", **context)
    else:
        log.error(f"{event}_failed", error=describe(exc), error_type=type_name(exc),
                  retry_in=round(delay, 3), exc_info=exc, **context)
    await anyio.sleep(delay)
    return delay
