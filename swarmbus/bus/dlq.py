"""Dead-letter streams: list, replay, purge.

A dead letter is the original entry's fields (whatever they were, garbage included)
plus ``dlq.*`` fields naming the target, the error type and text, attempts, when it
failed, the original entry id and the consumer that gave up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError, NotFound
from . import scripts
from .codec import decode, entry_signal_id
from .keys import check_topic
from .status import DeadLetter

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["dead_letter", "dead_letters", "purge_dead_letters", "replay_dead_letters"]

_META = b"dlq."
_RAW_PREVIEW = 4096
_CHUNK = 500


def _text(raw: bytes, limit: int | None = None) -> str:
    if limit is not None and len(raw) > limit:
        return raw[:limit].decode("utf-8", "backslashreplace") + f"... ({len(raw)} bytes)"
    return raw.decode("utf-8", "backslashreplace")


def _parse(bus: Bus, topic: str, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    meta = {k[len(_META) :].decode(): v for k, v in fields.items() if k.startswith(_META)}
    original = {k: v for k, v in fields.items() if not k.startswith(_META)}
    signal = None
    raw = None
    try:
        signal = decode(original, max(bus.settings.max_payload_bytes, 1 << 30))
    except DecodeError:
        raw = {_text(k): _text(v, _RAW_PREVIEW) for k, v in original.items()}
    failed_ms = int(meta.get("failed_at", b"0") or 0)
    return DeadLetter(
        id=entry_id.decode(),
        topic=topic,
        signal=signal,
        target=_text(meta.get("target", b"")),
        error_type=_text(meta.get("error_type", b"")),
        error=_text(meta.get("error", b"")),
        attempts=int(meta.get("attempts", b"0") or 0),
        failed_at=datetime.fromtimestamp(failed_ms / 1000, UTC),
        entry_id=_text(meta["entry"]) if meta.get("entry") else None,
        raw=raw,
    )


async def dead_letters(bus: Bus, topic: str, *, limit: int = 100) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``topic``."""
    check_topic(topic)
    with bus.errors():
        entries = await bus.redis.xrange(bus.keys.topic(topic).dlq, count=max(limit, 1))
    return [_parse(bus, topic, eid, fields) for eid, fields in entries]


async def dead_letter(bus: Bus, topic: str, dead_letter_id: str) -> DeadLetter:
    check_topic(topic)
    with bus.errors():
        found = await bus.redis.xrange(bus.keys.topic(topic).dlq, dead_letter_id,
                                       dead_letter_id)
    if not found:
        raise NotFound(f"no dead letter {dead_letter_id!r} on topic {topic!r}")
    return _parse(bus, topic, found[0][0], found[0][1])


async def replay_dead_letters(
    bus: Bus,
    topic: str,
    ids: Sequence[str] | None = None,
    *,
    progress: Callable[[int, int], Any] | None = None,
) -> int:
    """Put dead letters back on ``topic`` for their target; returns how many moved.

    Dead letters without a valid envelope (garbage written to the stream) stay where they
    are: there is nothing to deliver. ``progress(done, total)`` is called per chunk.
    """
    check_topic(topic)
    tk = bus.keys.topic(topic)
    settings = bus.settings
    ttl_ms = int((settings.signal_ttl + settings.status_grace) * 1000)
    with bus.errors():
        if ids is None:
            entries = await _all_entries(bus, tk.dlq)
        else:
            async with bus.redis.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.xrange(tk.dlq, i, i)
                entries = [e[0] for e in await pipe.execute() if e]
        moved = 0
        total = len(entries)
        for start in range(0, total, _CHUNK):
            chunk = entries[start : start + _CHUNK]
            now_ms = int(time.time() * 1000)
            calls = []
            for eid, fields in chunk:
                sid = entry_signal_id(fields) or "~"
                calls.append(
                    (scripts.REPLAY, [tk.stream, tk.dlq, tk.status(sid)], [eid, now_ms, ttl_ms])
                )
            results = await scripts.run_many(bus.redis, calls)
            moved += sum(1 for r in results if r == 1)
            if progress is not None:
                progress(min(start + _CHUNK, total), total)
    return moved


async def _all_entries(bus: Bus, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        batch = await bus.redis.xrange(key, min=start, count=_CHUNK)
        out.extend(batch)
        if len(batch) < _CHUNK:
            return out
        start = "(" + batch[-1][0].decode()


async def purge_dead_letters(bus: Bus, topic: str) -> int:
    """Delete every dead letter of ``topic``; returns how many there were."""
    check_topic(topic)
    key = bus.keys.topic(topic).dlq
    with bus.errors():
        async with bus.redis.pipeline(transaction=True) as pipe:
            pipe.xlen(key)
            pipe.delete(key)
            count, _ = await pipe.execute()
    return int(count)
