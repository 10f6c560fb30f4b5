"""What a delivery is: the handler contract, held entries, handler slots, counters."""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from .signal import Signal

__all__ = ["Delivery", "Handler", "Held", "Slots", "Stats", "new_consumer_name"]


def new_consumer_name() -> str:
    """``host:pid:random``, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler is told about the delivery it is running for."""

    topic: str
    entry_id: str
    attempt: int
    consumer: str
    agent: str


#: A handler gets the signal and its delivery; it may return a decision id for the status.
Handler = Callable[[Signal, Delivery], Awaitable[str | None]]


@dataclass(slots=True, eq=False)
class Held:
    """An entry this consumer holds: waiting for a slot, running, or waiting to retry."""

    topic: str
    entry_id: str
    signal: Signal
    attempt: int = 0
    #: The current attempt's handler started (a release must not give the attempt back).
    started: bool = False
    #: Its terminal op is queued: the entry is only waiting for its ack.
    finishing: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.topic, self.entry_id


class Slots:
    """Handler slots shared by every consumer of one worker process.

    ``Settings.concurrency`` bounds in-flight handlers per process, whatever the number of
    agents in it: each agent's consumer takes slots from the same pool.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("concurrency must be at least 1")
        self.limit = limit
        self.used = 0
        self._freed = anyio.Event()

    @property
    def free(self) -> int:
        return self.limit - self.used

    def take(self) -> None:
        self.used += 1

    def give(self) -> None:
        self.used -= 1
        self.wake()

    def wake(self) -> None:
        """Wake every task waiting for a slot (or for room to hold more entries)."""
        self._freed.set()
        self._freed = anyio.Event()

    async def wait(self) -> None:
        await self._freed.wait()


@dataclass(slots=True)
class Stats:
    """Counters of one consumer since it started."""

    processed: int = 0
    failed: int = 0
    expired: int = 0
    skipped: int = 0
    retried: int = 0
    reclaimed: int = 0
    undecodable: int = 0
    reconnects: int = 0
    timeouts: int = 0
    released: int = 0
    #: Handler durations: the most recent 10,000, and those since ``take_interval()``.
    handler_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000),
                                          repr=False)
    interval_seconds: list[float] = field(default_factory=list, repr=False)
    interval_failed: int = 0

    def take_interval(self) -> tuple[list[float], int]:
        """Durations and failures since the last call (for per-heartbeat metrics)."""
        taken, failed = self.interval_seconds, self.interval_failed
        self.interval_seconds, self.interval_failed = [], 0
        return taken, failed
