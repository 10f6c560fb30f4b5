"""Publishing: one script call per signal, pipelined for batches."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import BusResponseError, InvalidSignal
from . import scripts
from .codec import F_DATA, F_ID, F_VERSION, encode
from .signal import Signal

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["prepare", "publish", "publish_many"]

log = structlog.get_logger(__name__)

Call = tuple[scripts.Script, list[str], list[Any]]


def prepare(bus: Bus, signal: Signal, now: float | None = None) -> tuple[Signal, Call]:
    """Validate, fill defaults and encode ``signal`` into one PUBLISH script call."""
    if not isinstance(signal, Signal):
        raise InvalidSignal(f"publish() takes a swarmbus.Signal, got {type(signal).__name__}")
    settings = bus.settings
    if signal.expires_at is None:
        signal = signal.model_copy(
            update={"expires_at": signal.created_at + timedelta(seconds=settings.signal_ttl)}
        )
    fields = encode(signal, settings.max_payload_bytes)
    now = time.time() if now is None else now
    remaining = max(signal.expires.timestamp() - now, 1.0)
    ttl_ms = int((remaining + settings.status_grace) * 1000)
    tk = bus.keys.topic(signal.type)
    args: list[Any] = [int(now * 1000), ttl_ms, len(signal.targets), *signal.targets]
    args += [fields[F_VERSION], fields[F_ID], fields[F_DATA]]
    return signal, (scripts.PUBLISH, [tk.stream, tk.status(signal.id), tk.subs], args)


def _entry(result: Any, signal: Signal) -> str:
    if isinstance(result, Exception):
        raise BusResponseError(f"publishing signal {signal.id} failed: {result}") from result
    return result[1].decode() if isinstance(result[1], bytes) else str(result[1])


async def publish(bus: Bus, signal: Signal) -> str:
    signal, (script, keys, args) = prepare(bus, signal)
    await bus.register_topics((signal.type,))
    with bus.errors():
        result = await scripts.run(bus.redis, script, keys, args)
    if result[0] == 0:
        log.debug("signal_duplicate_ignored", signal_id=signal.id, topic=signal.type)
    _entry(result, signal)
    return signal.id


async def publish_many(bus: Bus, signals: Sequence[Signal]) -> list[str]:
    """Publish ``signals`` in one pipelined round trip (per-signal atomic, not all-or-none).

    Every signal is validated and encoded before anything is sent, so one bad signal in
    the batch raises before any of them is published.
    """
    now = time.time()
    prepared = [prepare(bus, s, now) for s in signals]
    if not prepared:
        return []
    await bus.register_topics({s.type for s, _ in prepared})
    with bus.errors():
        results = await scripts.run_many(bus.redis, [call for _, call in prepared])
    for (signal, _), result in zip(prepared, results, strict=True):
        _entry(result, signal)
    return [s.id for s, _ in prepared]
