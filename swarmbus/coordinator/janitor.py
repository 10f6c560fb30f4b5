"""The janitor: keeps Redis bounded without ever losing what is still owed.

- Topic streams are trimmed from the oldest entry up to the first one whose signal has
  not expired. Every target of a trimmed entry that had not finished is marked
  ``expired`` (and the entry acked in its group) in the same script that trims.
- STM streams are trimmed only behind the consolidation watermark (the oldest event the
  coordinators have not folded) and only past ``stm_ttl``.
- Decision indexes drop entries past ``decision_retention`` (records expire by TTL).
- A consumer is removed from a group only when it holds no pending entry (a live one has
  claimed them) and has been idle past ``dead_consumer_after`` without a live heartbeat.
- Dead-letter streams keep ``dlq_retention`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from redis import exceptions as rexc

from ..agents.registry import heartbeats
from ..bus import scripts
from ..bus.codec import decode, entry_signal_id
from ..errors import DecodeError
from .consolidation import GROUP

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["JanitorReport", "sweep"]

log = structlog.get_logger(__name__)
_CHUNK = 500


@dataclass
class JanitorReport:
    topic_entries_trimmed: int = 0
    expired_on_trim: int = 0
    stm_entries_trimmed: int = 0
    dead_letters_trimmed: int = 0
    consumers_removed: list[str] = field(default_factory=list)
    stale_token: bool = False


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def trim_topic(bus: Bus, topic: str, token: int, report: JanitorReport) -> None:
    tk = bus.keys.topic(topic)
    settings = bus.settings
    now = time.time()
    start = "-"
    while True:
        entries = await bus.redis.xrange(tk.stream, min=start, count=_CHUNK)
        if not entries:
            return
        ids: list[str] = []
        status_keys: list[str] = []
        keep_from: str | None = None
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            try:
                expires = decode(fields, 1 << 31).expires.timestamp()
            except DecodeError:  # garbage: consumers dead-lettered a copy of it
                expires = int(entry_id.split("-")[0]) / 1000 + settings.signal_ttl
            if expires > now:
                keep_from = entry_id
                break
            ids.append(entry_id)
            status_keys.append(tk.status(entry_signal_id(fields) or "~"))
        minid = keep_from or _next_id(ids[-1])
        if ids:
            trimmed = await scripts.run(
                bus.redis, scripts.JANITOR_TOPIC, [tk.stream, tk.fence, *status_keys],
                [token, int(now * 1000), minid, *ids],
            )
            if trimmed == -1:
                report.stale_token = True
                log.warning("janitor_fenced_off", topic=topic, token=token)
                return
            report.topic_entries_trimmed += int(trimmed)
        if keep_from is not None or len(entries) < _CHUNK:
            return
        start = minid


async def _stm_watermark(bus: Bus, agent: str) -> str | None:
    """The oldest STM event not yet folded by the coordinators (None: no group yet)."""
    stm = bus.keys.memory(agent).stm
    groups = await bus.redis.xinfo_groups(stm)
    group = next((g for g in groups if g["name"] == GROUP.encode()), None)
    if group is None:
        return None
    last = group["last-delivered-id"].decode()
    if int(group["pending"]):
        pending = await bus.redis.xpending(stm, GROUP)
        oldest = pending["min"].decode() if isinstance(pending["min"], bytes) else pending["min"]
        return oldest
    return _next_id(last) if last != "0-0" else "0-1"


def _older(a: str, b: str) -> str:
    pa, pb = a.split("-"), b.split("-")
    return a if (int(pa[0]), int(pa[1])) <= (int(pb[0]), int(pb[1])) else b


async def trim_memory(bus: Bus, agent: str, report: JanitorReport) -> None:
    k = bus.keys.memory(agent)
    settings = bus.settings
    now_ms = int(time.time() * 1000)
    if await bus.redis.exists(k.stm):
        watermark = await _stm_watermark(bus, agent)
        if watermark is not None:
            horizon = f"{now_ms - int(settings.stm_ttl * 1000)}-0"
            minid = _older(watermark, horizon)
            report.stm_entries_trimmed += int(
                await bus.redis.xtrim(k.stm, minid=minid, approximate=False)
            )
            await bus.redis.zremrangebyscore(k.applied, "-inf", f"({minid.split('-')[0]}")
    retention_floor = now_ms - int(settings.decision_retention * 1000)
    types = await bus.redis.smembers(k.types)
    async with bus.redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(k.decisions, "-inf", retention_floor)
        for t in types:
            pipe.zremrangebyscore(k.decisions_of_type(t.decode()), "-inf", retention_floor)
        await pipe.execute()


async def remove_dead_consumers(
    bus: Bus, topics: list[str], dead_after: float, report: JanitorReport
) -> None:
    live = {h.consumer for h in await heartbeats(bus) if h.alive}
    for topic in topics:
        stream = bus.keys.topic(topic).stream
        try:
            groups = await bus.redis.xinfo_groups(stream)
        except rexc.ResponseError:  # a registered topic with no stream yet
            continue
        for g in groups:
            group = g["name"].decode()
            for c in await bus.redis.xinfo_consumers(stream, group):
                name = c["name"].decode()
                if c["pending"] == 0 and c["idle"] / 1000 > dead_after and name not in live:
                    await bus.redis.xgroup_delconsumer(stream, group, name)
                    report.consumers_removed.append(f"{topic}/{group}/{name}")


async def sweep(
    bus: Bus,
    token: int,
    agents: list[str],
    *,
    dlq_retention: float,
    dead_consumer_after: float,
) -> JanitorReport:
    """One pass over every topic and agent of the namespace."""
    report = JanitorReport()
    topics = await bus.topics()
    for topic in topics:
        await trim_topic(bus, topic, token, report)
        if report.stale_token:
            return report
        floor = int((time.time() - dlq_retention) * 1000)
        report.dead_letters_trimmed += int(
            await bus.redis.xtrim(bus.keys.topic(topic).dlq, minid=f"{floor}-0",
                                  approximate=False)
        )
    for agent in agents:
        await trim_memory(bus, agent, report)
    await remove_dead_consumers(bus, topics, dead_consumer_after, report)
    return report
