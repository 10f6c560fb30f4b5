"""Heartbeats: which consumers of which agents are alive, and what they are doing.

Each consumer's last record (JSON) lives in one hash and its last beat in one sorted set.
A consumer whose last beat is older than its own ``ttl`` is dead: it stopped beating
without deregistering (crash, SIGKILL, lost host). Dead ones are listed for a day.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["Heartbeat", "IntervalMetrics", "beat", "forget", "heartbeats"]

#: Entries kept per agent metrics stream (about 3 hours of 5 s heartbeats per consumer).
METRICS_KEPT = 2000

#: Dead consumers are listed this long after their last beat, then forgotten.
DEAD_KEPT = 86_400.0


class Heartbeat(BaseModel):
    model_config = ConfigDict(frozen=True)

    agent: str
    consumer: str
    host: str
    pid: int
    version: str
    topics: list[str]
    in_flight: int
    processed: int
    failed: int
    started_at: datetime
    last_beat: datetime
    #: Seconds after ``last_beat`` when the consumer counts as dead.
    ttl: float
    alive: bool = True

    @property
    def member(self) -> str:
        return f"{self.agent}/{self.consumer}"


class IntervalMetrics(BaseModel):
    """What one consumer of an agent did between two heartbeats."""

    model_config = ConfigDict(frozen=True)

    agent: str
    consumer: str
    at: datetime
    seconds: float
    handled: int
    failed: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None


async def beat(
    bus: Bus, records: list[Heartbeat], metrics: list[IntervalMetrics] | None = None
) -> None:
    """Write heartbeat records and interval metrics (one round trip for a whole worker)."""
    keys = bus.keys
    async with bus.redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.heartbeat_records, mapping={r.member: r.model_dump_json() for r in records})
        pipe.zadd(keys.heartbeats, {r.member: int(r.last_beat.timestamp() * 1000) for r in records})
        for m in metrics or []:
            pipe.xadd(keys.memory(m.agent).metrics, {"m": m.model_dump_json()},
                      maxlen=METRICS_KEPT, approximate=True)
        await pipe.execute()


async def forget(bus: Bus, members: list[str]) -> None:
    """Deregister consumers (stopped cleanly, or dead past ``DEAD_KEPT``)."""
    if not members:
        return
    keys = bus.keys
    async with bus.redis.pipeline(transaction=False) as pipe:
        pipe.hdel(keys.heartbeat_records, *members)
        pipe.zrem(keys.heartbeats, *members)
        await pipe.execute()


async def heartbeats(bus: Bus) -> list[Heartbeat]:
    """Every consumer seen in the last day, live ones first, each marked alive or not."""
    keys = bus.keys
    now = time.time()
    with bus.errors():
        stale = await bus.redis.zrangebyscore(keys.heartbeats, 0, int((now - DEAD_KEPT) * 1000))
        if stale:
            await forget(bus, [m.decode() for m in stale])
        records = await bus.redis.hgetall(keys.heartbeat_records)
    out = []
    for raw in records.values():
        h = Heartbeat.model_validate_json(raw)
        alive = now - h.last_beat.timestamp() <= h.ttl
        out.append(h if alive else h.model_copy(update={"alive": False}))
    out.sort(key=lambda h: (not h.alive, h.agent, h.consumer))
    return out
