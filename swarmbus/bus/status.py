"""Per-target status, waiting on it, and consumer-group inspection."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict

from ..errors import SignalNotFound, WaitTimeout
from .keys import check_signal_id
from .signal import Signal

if TYPE_CHECKING:
    from .connection import Bus

__all__ = [
    "DeadLetter",
    "GroupInfo",
    "SignalStatus",
    "StatusState",
    "TargetStatus",
    "get_status",
    "groups",
    "parse_target",
    "wait",
]


class StatusState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    processed = "processed"
    failed = "failed"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {StatusState.processed, StatusState.failed, StatusState.expired}
_CODES = {
    "p": StatusState.pending,
    "d": StatusState.delivered,
    "s": StatusState.processed,
    "f": StatusState.failed,
    "x": StatusState.expired,
}


class TargetStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: StatusState
    attempts: int = 0
    updated_at: datetime | None = None
    consumer: str | None = None
    error: str | None = None
    decision_id: str | None = None


class SignalStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    signal_id: str
    type: str
    entry_id: str | None = None
    targets: dict[str, TargetStatus]

    @property
    def done(self) -> bool:
        """True once every target is in a terminal state."""
        return all(t.state.terminal for t in self.targets.values())


class GroupInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    agent: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered_id: str
    #: Seconds since the most recently active consumer of the group did anything.
    idle: float | None = None
    consumer_names: list[str] = []


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    topic: str
    signal: Signal | None
    target: str
    error_type: str
    error: str
    attempts: int
    failed_at: datetime
    entry_id: str | None = None
    #: The original entry's fields when they were not a valid envelope.
    raw: dict[str, str] | None = None


def parse_target(value: bytes | str) -> TargetStatus:
    """A ``TargetStatus`` from the packed hash value written by the Lua scripts."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    parts = text.split("|", 5)
    parts += [""] * (6 - len(parts))
    code, attempts, updated, consumer, decision, error = parts
    return TargetStatus(
        state=_CODES.get(code, StatusState.pending),
        attempts=int(attempts) if attempts.isdigit() else 0,
        updated_at=_ms_time(updated),
        consumer=consumer or None,
        decision_id=decision or None,
        error=error or None,
    )


def _ms_time(text: str) -> datetime | None:
    if not text.isdigit():
        return None
    try:
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _status(signal_id: str, topic: str, raw: dict[bytes, bytes]) -> SignalStatus:
    entry = raw.get(b"_e")
    return SignalStatus(
        signal_id=signal_id,
        type=topic,
        entry_id=entry.decode("utf-8", "replace") if entry else None,
        targets={k.decode("utf-8", "replace"): parse_target(v) for k, v in sorted(raw.items())
                 if not k.startswith(b"_")},
    )


async def get_status(bus: Bus, signal_id: str, *, topic: str | None = None) -> SignalStatus:
    """Status of ``signal_id``: one HGETALL per known topic, all in one round trip."""
    check_signal_id(signal_id)
    if topic is not None:
        candidates = [topic]
    else:
        with bus.errors():
            candidates = sorted(t.decode() for t in await bus.redis.smembers(bus.keys.topics))
    with bus.errors():
        async with bus.redis.pipeline(transaction=False) as pipe:
            for name in candidates:
                pipe.hgetall(bus.keys.topic(name).status(signal_id))
            found = await pipe.execute()
    for name, raw in zip(candidates, found, strict=True):
        if raw:
            return _status(signal_id, name, raw)
    raise SignalNotFound(signal_id)


async def wait(
    bus: Bus,
    signal_id: str,
    *,
    timeout: float | timedelta | None = None,
    topic: str | None = None,
) -> SignalStatus:
    """Poll the status (5 ms, doubling to 250 ms) until every target is terminal."""
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    delay = 0.005
    status = await get_status(bus, signal_id, topic=topic)
    topic = status.type
    while not status.done:
        left = deadline - anyio.current_time()
        if left <= 0:
            pending = {k: v.state.value for k, v in status.targets.items() if not v.state.terminal}
            raise WaitTimeout(
                f"signal {signal_id} not finished after {timeout} s (still {pending})"
            )
        await anyio.sleep(min(delay, left))
        delay = min(delay * 2, 0.25)
        status = await get_status(bus, signal_id, topic=topic)
    return status


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def groups(bus: Bus, topic: str | None = None) -> list[GroupInfo]:
    """Every consumer group of ``topic`` (or of all topics), two round trips in all."""
    topics = [topic] if topic is not None else await bus.topics()
    with bus.errors():
        async with bus.redis.pipeline(transaction=False) as pipe:
            for name in topics:
                pipe.xinfo_groups(bus.keys.topic(name).stream)
            infos = await pipe.execute(raise_on_error=False)
        pairs: list[tuple[str, dict[str, Any]]] = []
        for name, info in zip(topics, infos, strict=True):
            if isinstance(info, Exception):  # no stream yet for a registered topic
                continue
            pairs.extend((name, g) for g in info)
        async with bus.redis.pipeline(transaction=False) as pipe:
            for name, g in pairs:
                pipe.xinfo_consumers(bus.keys.topic(name).stream, g["name"])
            consumers = await pipe.execute(raise_on_error=False)
    out = []
    for (name, g), cons in zip(pairs, consumers, strict=True):
        cons = [] if isinstance(cons, Exception) else cons
        idle = min((c["idle"] for c in cons), default=None)
        lag = g.get("lag")
        out.append(
            GroupInfo(
                topic=name,
                agent=_text(g["name"]),
                consumers=int(g["consumers"]),
                pending=int(g["pending"]),
                lag=None if lag is None else int(lag),
                last_delivered_id=_text(g["last-delivered-id"]),
                idle=None if idle is None else idle / 1000,
                consumer_names=sorted(_text(c["name"]) for c in cons),
            )
        )
    return out
