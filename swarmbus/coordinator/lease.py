"""The lease that lets one coordinator replica at a time run the periodic jobs.

Taking a free lease hands out a new fencing token (a counter that only grows). Every
write the janitor makes to a topic carries its token, and the topic remembers the highest
token it has seen: a replica that lost its lease while paused (GC, network) and wakes up
with an old token cannot touch anything a newer holder already worked on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..bus import scripts

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["Lease"]


class Lease:
    def __init__(self, bus: Bus, holder: str, *, ttl: float = 15.0) -> None:
        self.bus = bus
        self.holder = holder
        self.ttl = ttl
        self.token: int | None = None

    async def acquire(self) -> int | None:
        """Take or renew the lease; the fencing token while held, else None."""
        keys = [self.bus.keys.lease, self.bus.keys.fence]
        token = int(await scripts.run(self.bus.redis, scripts.LEASE_ACQUIRE, keys,
                                      [self.holder, int(self.ttl * 1000)]))
        self.token = token or None
        return self.token

    async def release(self) -> None:
        if self.token is not None:
            await scripts.run(self.bus.redis, scripts.LEASE_RELEASE, [self.bus.keys.lease],
                              [self.holder, self.token])
            self.token = None
