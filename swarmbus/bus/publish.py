"""Publishing: one script call per topic batch (atomic), pipelined across topics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import BusResponseError, InvalidSignal
from . import scripts
from .codec import F_DATA, encode
from .signal import Signal

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["prepare", "publish", "publish_many", "publish_once"]

log = structlog.get_logger(__name__)

#: Signals per PUBLISH script call: bounds how long one call holds the server.
CHUNK = 500


def prepare(bus: Bus, signal: Signal, now: float) -> tuple[Signal, list[Any]]:
    """Validate, fill defaults and encode ``signal`` into its PUBLISH arguments."""
    if not isinstance(signal, Signal):
        raise InvalidSignal(f"publish() takes a swarmbus.Signal, got {type(signal).__name__}")
    settings = bus.settings
    if signal.expires_at is None:
        signal = signal.model_copy(
            update={"expires_at": signal.created_at + timedelta(seconds=settings.signal_ttl)}
        )
    fields = encode(signal, settings.max_payload_bytes)
    remaining = max(signal.expires.timestamp() - now, 1.0)
    ttl_ms = int((remaining + settings.status_grace) * 1000)
    return signal, [signal.id, ttl_ms, len(signal.targets), *signal.targets, fields[F_DATA]]


def _calls(
    bus: Bus, prepared: list[tuple[Signal, list[Any]]], now: float
) -> list[tuple[scripts.Script, list[str], list[Any], list[int]]]:
    """PUBLISH calls, one per topic chunk, with the batch positions each one covers."""
    by_topic: dict[str, list[int]] = {}
    for index, (signal, _) in enumerate(prepared):
        by_topic.setdefault(signal.type, []).append(index)
    calls = []
    for topic, indexes in by_topic.items():
        tk = bus.keys.topic(topic)
        for start in range(0, len(indexes), CHUNK):
            chunk = indexes[start : start + CHUNK]
            args: list[Any] = [int(now * 1000), tk.status_prefix, "0"]
            for index in chunk:
                args += prepared[index][1]
            calls.append((scripts.PUBLISH, [tk.stream, tk.subs, tk.groups], args, chunk))
    return calls


async def publish(bus: Bus, signal: Signal) -> str:
    """Publish one signal; returns its id. Idempotent on ``signal.id``."""
    signal_id, _ = await _publish(bus, signal, want_existing=False)
    return signal_id


async def publish_once(bus: Bus, signal: Signal) -> tuple[str, bytes | None]:
    """Publish one signal; returns its id and, when the id was published before, the
    envelope data (``d``) of the signal already stored under it (b"" if gone)."""
    return await _publish(bus, signal, want_existing=True)


async def _publish(bus: Bus, signal: Signal, *, want_existing: bool) -> tuple[str, bytes | None]:
    now = time.time()
    signal, args = prepare(bus, signal, now)
    if signal.type not in bus.known_topics:
        await bus.register_topics((signal.type,))
    tk = bus.keys.topic(signal.type)
    with bus.errors():
        result = await scripts.run(bus.redis, scripts.PUBLISH, [tk.stream, tk.subs, tk.groups],
                                   [int(now * 1000), tk.status_prefix,
                                    "1" if want_existing else "0", *args])
    if result[1] == 0:
        log.debug("signal_duplicate_ignored", signal_id=signal.id)
        return signal.id, bytes(result[2])
    return signal.id, None


async def publish_many(bus: Bus, signals: Sequence[Signal]) -> list[str]:
    """Publish ``signals`` in one round trip: atomic per topic batch, pipelined across topics.

    Every signal is validated and encoded before anything is sent, so one bad signal in
    the batch raises before any of them is published.
    """
    now = time.time()
    prepared = [prepare(bus, s, now) for s in signals]
    if not prepared:
        return []
    await bus.register_topics({s.type for s, _ in prepared})
    calls = _calls(bus, prepared, now)
    with bus.errors():
        results = await scripts.run_many(bus.redis, [c[:3] for c in calls])
    for (*_, chunk), result in zip(calls, results, strict=True):
        if isinstance(result, Exception):
            ids = ", ".join(prepared[i][0].id for i in chunk[:3])
            raise BusResponseError(f"publishing {len(chunk)} signal(s) ({ids}, ...) failed: "
                                   f"{result}") from result
        for position, index in enumerate(chunk):
            if result[3 * position + 1] == 0:
                log.debug("signal_duplicate_ignored", signal_id=prepared[index][0].id)
    return [s.id for s, _ in prepared]
