"""Every error swarmbus raises itself.

The tree::

    SwarmbusError
    ├── ConfigurationError        bad settings, URL or name given to the library
    ├── BusConnectionError        Redis unreachable or the connection dropped
    ├── BusResponseError          Redis answered with an error we did not expect
    ├── InvalidSignal             a value that cannot become a valid signal
    │   ├── PayloadTooLarge       encoded signal over ``max_payload_bytes``
    │   └── DecodeError           a stream entry that is not a valid envelope
    ├── NotFound
    │   └── SignalNotFound        no status for that signal id
    ├── Conflict
    │   ├── StateConflict         optimistic lock lost (memory state)
    │   └── EffectConflict        a re-run's effect does not match the one recorded
    ├── WaitTimeout               ``Bus.wait`` gave up (also a ``TimeoutError``)
    ├── HandlerTimeout            a handler ran past ``handler_timeout`` (a failed attempt)
    └── HandlerControl            raised *by handlers* to steer delivery
        ├── Retry                 retry after ``delay`` seconds
        └── Reject                dead-letter at once with ``reason``
            └── InvalidData       ``signal.data`` does not fit the handler's model

``ValidationError`` from pydantic is left as it is when a ``Signal`` is built with
an invalid field: it names the field, which is what a caller needs.
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = [
    "BusConnectionError",
    "BusResponseError",
    "ConfigurationError",
    "Conflict",
    "DecodeError",
    "EffectConflict",
    "HandlerControl",
    "HandlerTimeout",
    "InvalidData",
    "InvalidSignal",
    "NotFound",
    "PayloadTooLarge",
    "Reject",
    "Retry",
    "SignalNotFound",
    "StateConflict",
    "SwarmbusError",
    "WaitTimeout",
]


class SwarmbusError(Exception):
    """Root of every error raised by swarmbus."""


class ConfigurationError(SwarmbusError, ValueError):
    """A setting, URL or name handed to the library is not usable."""


class BusConnectionError(SwarmbusError, ConnectionError):
    """Redis could not be reached, or the connection dropped mid-call."""


class BusResponseError(SwarmbusError):
    """Redis answered a command with an error swarmbus does not handle itself."""


class InvalidSignal(SwarmbusError, ValueError):
    """A value that cannot be turned into a valid signal."""


class PayloadTooLarge(InvalidSignal):
    """The encoded signal is larger than ``Settings.max_payload_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"encoded signal is {size} bytes, over the limit of {limit} bytes "
            "(raise SWARMBUS_MAX_PAYLOAD_BYTES or store the payload elsewhere and send a reference)"
        )


class DecodeError(InvalidSignal):
    """A stream entry is not a valid swarmbus envelope; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NotFound(SwarmbusError, LookupError):
    """Something looked up by name or id does not exist."""


class SignalNotFound(NotFound):
    """No status is known for the signal id (never published, or past its retention)."""

    def __init__(self, signal_id: str) -> None:
        self.signal_id = signal_id
        super().__init__(
            f"unknown signal {signal_id!r}: never published in this namespace, "
            "or its status expired with the signal"
        )


class Conflict(SwarmbusError):
    """A write lost a race with another writer."""


class StateConflict(Conflict):
    """An agent's state moved on since the version the caller expected."""


class EffectConflict(Conflict):
    """An effect (published signal or decision) derived for a handler re-run finds a
    different record already stored under its id: the handler is not deterministic in
    what it does under that ``key=``. Give distinct effects distinct keys."""


class WaitTimeout(SwarmbusError, TimeoutError):
    """``Bus.wait`` reached its timeout before every target was terminal."""


class HandlerTimeout(SwarmbusError, TimeoutError):
    """A handler ran longer than ``Settings.handler_timeout``: a failed attempt.

    An async handler is cancelled at the deadline. A plain ``def`` handler runs in a
    thread, which cannot be interrupted: the attempt counts as failed when it returns.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"handler ran past handler_timeout ({seconds:g} s)")


class HandlerControl(SwarmbusError):
    """Base of the exceptions a handler raises to steer its own delivery."""


class Retry(HandlerControl):
    """Ask for the signal to be delivered again after ``delay`` seconds.

    Counts as an attempt: once ``max_attempts`` is reached the signal is dead-lettered.
    """

    def __init__(self, delay: float | timedelta | None = None, reason: str = "") -> None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise TypeError(f"Retry delay must be seconds or a timedelta, got {delay!r}")
            if not math.isfinite(delay) or delay < 0:
                raise ValueError(f"Retry delay must be finite and >= 0 seconds, got {delay!r}")
            delay = float(delay)
        self.delay = delay
        self.reason = reason
        super().__init__(reason or f"retry requested (delay={delay})")


class Reject(HandlerControl):
    """Dead-letter the signal at once, without further attempts."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidData(Reject):
    """The signal's ``data`` does not validate against the model its handler declared."""
