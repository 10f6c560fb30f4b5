"""The janitor: keeps Redis bounded without ever losing what is still owed.

- Topic streams are trimmed from the oldest entry up to the first one whose signal has
  not expired. Every target of a trimmed entry that had not finished is marked
  ``expired`` (and the entry acked in its group) in the same script that trims.
- Past that first live entry (a signal with a long TTL pins MINID), expired entries are
  deleted one by one (XDEL, same marking), scanning at most ``SWEEP_BUDGET`` entries per
  topic and run from where the previous run stopped, so one long-lived signal never
  keeps thousands of finished ones alive.
- STM streams are trimmed only behind the consolidation watermark (the oldest event the
  coordinators have not folded) and only past ``stm_ttl``.
- Decision indexes drop entries past ``decision_retention`` (records expire by TTL).
- A consumer is removed from a group only when it holds no pending entry (a live one has
  claimed them) and has been idle past ``dead_consumer_after`` without a live heartbeat
  (both by the server's clock); the pending check and the removal are one script.
- Dead-letter streams keep ``dlq_retention`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from ..agents.registry import heartbeats
from ..bus import scripts
from ..bus.codec import decode, entry_signal_id
from ..bus.keys import TopicKeys
from ..errors import DecodeError
from .consolidation import GROUP

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["JanitorReport", "sweep"]

log = structlog.get_logger(__name__)
_CHUNK = 500
#: Entries past a long-lived one that one janitor run looks at, per topic.
SWEEP_BUDGET = 20_000


@dataclass
class JanitorReport:
    topic_entries_trimmed: int = 0
    expired_on_trim: int = 0
    stm_entries_trimmed: int = 0
    dead_letters_trimmed: int = 0
    consumers_removed: list[str] = field(default_factory=list)
    stale_token: bool = False
    swept: int = 0


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _expiry(fields: dict[bytes, bytes], entry_id: str, ttl: float) -> float:
    """When an entry's signal expires (epoch seconds); garbage lives ``ttl`` from entry time."""
    data = fields.get(b"d")
    if data is not None:
        try:  # the fast way: only the field we need, no full validation
            raw = orjson.loads(data).get("expires_at")
            if isinstance(raw, str):
                return datetime.fromisoformat(raw).timestamp()
        except (orjson.JSONDecodeError, AttributeError, ValueError, OverflowError, OSError):
            pass
        try:
            return decode(fields, 1 << 31).expires.timestamp()
        except DecodeError:
            pass
    return int(entry_id.split("-")[0]) / 1000 + ttl


async def _remove(
    bus: Bus, tk: TopicKeys, token: int, now: float, minid: str, ids: list[str],
    status_keys: list[str], report: JanitorReport,
) -> bool:
    """Expire and remove entries; False when a newer janitor fenced this one off."""
    removed = await scripts.run(
        bus.redis, scripts.JANITOR_TOPIC, [tk.stream, tk.fence, tk.bad, *status_keys],
        [token, int(now * 1000), minid, *ids],
    )
    if removed == -1:
        report.stale_token = True
        log.warning("janitor_fenced_off", topic=tk.topic, token=token)
        return False
    report.topic_entries_trimmed += int(removed)
    return True


async def trim_topic(bus: Bus, topic: str, token: int, report: JanitorReport) -> None:
    tk = bus.keys.topic(topic)
    ttl = bus.settings.signal_ttl
    now = time.time()
    start = "-"
    pin: str | None = None
    while True:
        entries = await bus.redis.xrange(tk.stream, min=start, count=_CHUNK)
        if not entries:
            return
        ids: list[str] = []
        status_keys: list[str] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if _expiry(fields, entry_id, ttl) > now:
                pin = entry_id
                break
            ids.append(entry_id)
            status_keys.append(tk.status(entry_signal_id(fields) or "~"))
        minid = pin or _next_id(ids[-1])
        if ids and not await _remove(bus, tk, token, now, minid, ids, status_keys, report):
            return
        if pin is not None:
            break
        if len(entries) < _CHUNK:
            return
        start = minid
    await _sweep(bus, tk, token, pin, now, report)


async def _sweep(
    bus: Bus, tk: TopicKeys, token: int, pin: str, now: float, report: JanitorReport
) -> None:
    """Delete expired entries behind the first live one, from where the last run stopped."""
    ttl = bus.settings.signal_ttl
    saved = await bus.redis.get(tk.sweep)
    cursor = saved.decode() if saved else pin
    if _before(cursor, pin):
        cursor = pin
    scanned = 0
    while scanned < SWEEP_BUDGET:
        entries = await bus.redis.xrange(tk.stream, min="(" + cursor, count=_CHUNK)
        if not entries:
            cursor = pin  # reached the end: the next run starts over behind the pin
            break
        ids: list[str] = []
        status_keys: list[str] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if _expiry(fields, entry_id, ttl) <= now:
                ids.append(entry_id)
                status_keys.append(tk.status(entry_signal_id(fields) or "~"))
        if ids:
            if not await _remove(bus, tk, token, now, "", ids, status_keys, report):
                return
            report.swept += len(ids)
        cursor = entries[-1][0].decode()
        scanned += len(entries)
    await bus.redis.set(tk.sweep, cursor, px=int((ttl + bus.settings.status_grace) * 1000))


def _before(a: str, b: str) -> bool:
    pa, pb = a.split("-"), b.split("-")
    return (int(pa[0]), int(pa[1] or 0)) < (int(pb[0]), int(pb[1] or 0))


async def _stm_watermark(bus: Bus, agent: str) -> str | None:
    """The oldest STM event not yet folded by the coordinators (None: no group yet).

    One round trip for both the group and its pending summary, so the two agree; an
    empty pending list (``min`` None) means everything up to last-delivered is folded.
    """
    stm = bus.keys.memory(agent).stm
    async with bus.redis.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(stm)
        pipe.xpending(stm, GROUP)
        groups, pending = await pipe.execute(raise_on_error=False)
    if isinstance(groups, Exception):
        raise groups
    group = next((g for g in groups if g["name"] == GROUP.encode()), None)
    if group is None:
        return None
    oldest: Any = None if isinstance(pending, Exception) else pending.get("min")
    if oldest is not None and int(pending.get("pending") or 0):
        return oldest.decode() if isinstance(oldest, bytes) else str(oldest)
    last = group["last-delivered-id"].decode()
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
        async with bus.redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(stream)
            (groups,) = await pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception):  # a registered topic with no stream yet
            continue
        for g in groups:
            group = g["name"].decode()
            for c in await bus.redis.xinfo_consumers(stream, group):
                name = c["name"].decode()
                # ``idle`` is measured by the server; the script re-checks pending itself
                if c["pending"] == 0 and c["idle"] / 1000 > dead_after and name not in live:
                    removed = await scripts.run(bus.redis, scripts.DELCONSUMER, [stream],
                                                [group, name])
                    if removed:
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
