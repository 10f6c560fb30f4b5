"""Heartbeats: which consumers of which agents are alive, and what they are doing.

Each consumer's last record (JSON) lives in one hash and its last beat in one sorted set,
stamped with the Redis server's clock (the HEARTBEAT script reads ``TIME``). A consumer
whose last beat is older than its own ``ttl`` by that same clock is dead: it stopped
beating without deregistering (crash, SIGKILL, lost host). Hosts whose clocks disagree
never make a live consumer look dead. Dead ones are listed for a day.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..bus import scripts

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
    args: list[str] = []
    for r in records:
        args += [r.member, r.model_dump_json()]
    calls = [(scripts.HEARTBEAT, [keys.heartbeats, keys.heartbeat_records], args)]
    results = await scripts.run_many(bus.redis, calls)
    if metrics:
        async with bus.redis.pipeline(transaction=False) as pipe:
            for m in metrics:
                pipe.xadd(keys.memory(m.agent).metrics, {"m": m.model_dump_json()},
                          maxlen=METRICS_KEPT, approximate=True)
            await pipe.execute()
    for result in results:
        if isinstance(result, Exception):
            raise result


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
    """Every consumer seen in the last day, live ones first, each marked alive or not.

    Alive means: its last beat, by the server's clock, is within its ``ttl`` of the
    server's ``TIME`` now. A record without a beat (or unreadable) counts as dead.
    """
    keys = bus.keys
    with bus.errors():
        async with bus.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(keys.heartbeats, 0, -1, withscores=True)
            pipe.hgetall(keys.heartbeat_records)
            server, stamps, records = await pipe.execute()
        now = float(server[0]) + float(server[1]) / 1e6
        beaten = {m.decode(): float(score) / 1000 for m, score in stamps}
        stale = [m for m, at in beaten.items() if now - at > DEAD_KEPT]
        if stale:
            await forget(bus, stale)
    out = []
    for member, raw in records.items():
        name = member.decode("utf-8", "replace")
        if name in stale:
            continue
        try:
            h = Heartbeat.model_validate_json(raw)
        except ValueError:
            continue
        at = beaten.get(name)
        alive = at is not None and now - at <= h.ttl
        out.append(h if alive else h.model_copy(update={"alive": False}))
    out.sort(key=lambda h: (not h.alive, h.agent, h.consumer))
    return out
