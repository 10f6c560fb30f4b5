"""Backoff: how long to wait before trying again, for loops and for handler retries."""

from __future__ import annotations

import math
import random

__all__ = ["Backoff", "retry_delay"]


class Backoff:
    """Exponential backoff with jitter: ``base`` doubling up to ``cap`` seconds.

    Each delay is drawn from the upper half of the current ceiling, so replicas that lost
    the same server spread their reconnects without any of them waiting for nothing.
    """

    __slots__ = ("attempts", "base", "cap")

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.base * 2.0 ** min(self.attempts, 60), self.cap)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


def retry_delay(base: float, attempt: int, cap: float) -> float:
    """Delay before handler attempt ``attempt + 1``: ``base * 2**(attempt-1)``, capped.

    Safe for any attempt number (``2.0**1024`` overflows a float; the exponent is capped
    long before that) and never NaN.
    """
    exponent = min(max(attempt - 1, 0), 60)
    delay = base * 2.0**exponent
    if not math.isfinite(delay):
        return cap
    return min(delay, cap)
