"""Who is out there: agents discovered from heartbeats and STM streams, and the work
that dead consumers still hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..agents.registry import Heartbeat, heartbeats

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["HeldWork", "discover_agents", "held_work"]


async def discover_agents(bus: Bus) -> list[str]:
    """Agents with a heartbeat or an STM stream in the namespace."""
    names = {h.agent for h in await heartbeats(bus)}
    with bus.errors():
        async for key in bus.redis.scan_iter(match=bus.keys.memory_pattern(), count=500):
            agent = bus.keys.agent_of_stm(key.decode())
            if agent:
                names.add(agent)
    return sorted(names)


class HeldWork(BaseModel):
    """Entries pending on one consumer of one group: who holds what, since when."""

    model_config = ConfigDict(frozen=True)

    topic: str
    agent: str
    consumer: str
    pending: int
    oldest_since: datetime | None
    alive: bool


async def held_work(bus: Bus, beats: list[Heartbeat] | None = None) -> list[HeldWork]:
    """Pending entries per consumer across every topic group, marked alive or dead."""
    beats = beats if beats is not None else await heartbeats(bus)
    live = {(h.agent, h.consumer) for h in beats if h.alive}
    out: list[HeldWork] = []
    with bus.errors():
        return await _held(bus, live, out)


async def _held(bus: Bus, live: set[tuple[str, str]], out: list[HeldWork]) -> list[HeldWork]:
    for group in await bus.groups():
        if not group.pending:
            continue
        stream = bus.keys.topic(group.topic).stream
        summary = await bus.redis.xpending(stream, group.agent)
        for entry in summary.get("consumers", []):
            consumer = entry["name"].decode() if isinstance(entry["name"], bytes) else entry["name"]
            oldest = await bus.redis.xpending_range(stream, group.agent, "-", "+", 1,
                                                    consumername=consumer)
            since = None
            if oldest:
                idle = timedelta(milliseconds=oldest[0]["time_since_delivered"])
                since = datetime.now(UTC) - idle
            out.append(HeldWork(
                topic=group.topic, agent=group.agent, consumer=consumer,
                pending=int(entry["pending"]), oldest_since=since,
                alive=(group.agent, consumer) in live,
            ))
    return out
