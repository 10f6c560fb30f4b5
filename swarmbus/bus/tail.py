"""Reading topic streams without joining any consumer group (XRANGE / XREAD)."""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import anyio
import structlog

from ..errors import ConfigurationError, DecodeError
from .backoff import Backoff
from .codec import decode
from .faults import ride_out
from .keys import check_topic
from .signal import Signal

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["resolve_topics", "tail"]

log = structlog.get_logger(__name__)

_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
_GLOB = set("*?[")
_CHUNK = 500
_REFRESH = 2.0

Entry = tuple[bytes, dict[bytes, bytes]]
T = TypeVar("T")


async def _patiently(call: Callable[[], Awaitable[T]], patient: bool) -> T:
    """``call()``; when ``patient`` (following), ride out Redis being away until it answers."""
    backoff = Backoff()
    while True:
        try:
            return await call()
        except Exception as exc:
            if not patient:
                raise
            await ride_out(exc, backoff, log, "tail")


def _start_id(since: datetime | timedelta | str) -> str:
    if isinstance(since, timedelta):
        return f"{int((time.time() - since.total_seconds()) * 1000)}-0"
    if isinstance(since, datetime):
        return f"{int(since.timestamp() * 1000)}-0"
    if _ENTRY_ID.match(since):
        return since
    raise ConfigurationError(
        f"invalid since {since!r}: give a datetime, a timedelta or a stream entry id"
    )


async def resolve_topics(bus: Bus, topics: str | Sequence[str] | None) -> list[str]:
    """Topic names for ``topics``: None means all, globs match known topics."""
    if isinstance(topics, str):
        topics = [topics]
    if not topics:
        return await bus.topics()
    names: set[str] = set()
    known: list[str] | None = None
    for pattern in topics:
        if _GLOB & set(pattern):
            known = known if known is not None else await bus.topics()
            names.update(fnmatch.filter(known, pattern))
        else:
            names.add(check_topic(pattern))
    return sorted(names)


def _signal(bus: Bus, topic: str, entry: Entry) -> Signal | None:
    try:
        return decode(entry[1], max(bus.settings.max_payload_bytes, 1 << 30))
    except DecodeError as exc:
        log.warning("tail_entry_skipped", topic=topic, entry_id=entry[0].decode(),
                    reason=exc.reason)
        return None


async def tail(
    bus: Bus,
    topics: str | Sequence[str] | None = None,
    *,
    since: datetime | timedelta | str | None = None,
    last: int | None = None,
    follow: bool = False,
) -> AsyncIterator[Signal]:
    """Yield signals in entry order across ``topics``.

    History first: the ``last`` N entries, or everything after ``since``, or (neither
    given, not following) the whole retained stream. Then, with ``follow``, new entries
    as they arrive; with globs or all topics, topics created later are picked up too.
    Following rides out Redis going away: it reconnects with backoff and resumes after
    the last entry it yielded, so nothing is skipped or yielded twice.
    """
    if last is not None and last < 0:
        raise ConfigurationError("last must be 0 or more")
    dynamic = topics is None or any(
        _GLOB & set(t) for t in ([topics] if isinstance(topics, str) else topics)
    )
    if since is not None:
        _start_id(since)  # a bad value is a usage error, whatever Redis is doing
    names = await _patiently(lambda: resolve_topics(bus, topics), follow)
    cursors: dict[str, str] = {}
    with bus.errors():
        if last is not None:
            history = await _patiently(lambda: _last(bus, names, last), follow)
        elif since is not None or not follow:
            start = "-" if since is None else _start_id(since)
            history = await _patiently(lambda: _range(bus, names, start), follow)
        else:
            history = []
        for topic, entry in history:
            cursors[topic] = entry[0].decode()
            signal = _signal(bus, topic, entry)
            if signal is not None:
                yield signal
        if not follow:
            return
        now_id = f"{int(time.time() * 1000)}-0"
        for topic in names:
            cursors.setdefault(topic, now_id if (last is not None or since is None) else
                               _start_id(since))
        async for topic, entry in _follow(bus, topics, names, cursors, dynamic):
            signal = _signal(bus, topic, entry)
            if signal is not None:
                yield signal


async def _last(bus: Bus, names: list[str], last: int) -> list[tuple[str, Entry]]:
    if last == 0 or not names:
        return []
    async with bus.redis.pipeline(transaction=False) as pipe:
        for topic in names:
            pipe.xrevrange(bus.keys.topic(topic).stream, count=last)
        results = await pipe.execute()
    merged = [(topic, e) for topic, entries in zip(names, results, strict=True) for e in entries]
    merged.sort(key=lambda te: _order(te[1][0]))
    return merged[-last:]


async def _range(bus: Bus, names: list[str], start: str) -> list[tuple[str, Entry]]:
    out: list[tuple[str, Entry]] = []
    for topic in names:
        key = bus.keys.topic(topic).stream
        cursor = start
        while True:
            batch = await bus.redis.xrange(key, min=cursor, count=_CHUNK)
            out.extend((topic, e) for e in batch)
            if len(batch) < _CHUNK:
                break
            cursor = "(" + batch[-1][0].decode()
    out.sort(key=lambda te: _order(te[1][0]))
    return out


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def _follow(
    bus: Bus,
    topics: str | Sequence[str] | None,
    names: list[str],
    cursors: dict[str, str],
    dynamic: bool,
) -> AsyncIterator[tuple[str, Entry]]:
    block = None if bus.embedded else int(min(bus.settings.block_timeout, _REFRESH) * 1000)
    refreshed = time.monotonic()
    idle = 0
    backoff = Backoff()
    while True:
        try:
            if dynamic and time.monotonic() - refreshed > _REFRESH:
                refreshed = time.monotonic()
                for topic in await resolve_topics(bus, topics):
                    cursors.setdefault(topic, "0-0")
            if not cursors:
                await anyio.sleep(_REFRESH if not bus.embedded else 0.05)
                continue
            streams = {bus.keys.topic(t).stream: c for t, c in cursors.items()}
            result = await bus.redis.xread(streams, count=_CHUNK, block=block)
            if backoff.attempts:
                log.info("tail_resumed", after={t: c for t, c in cursors.items()})
            backoff.reset()
        except Exception as exc:
            await ride_out(exc, backoff, log, "tail")
            continue
        got: list[tuple[str, Entry]] = []
        for stream, entries in result or []:
            name = bus.keys.topic_of_stream(stream.decode())
            if name is None:
                continue
            got.extend((name, entry) for entry in entries)
            if entries:
                cursors[name] = entries[-1][0].decode()
        got.sort(key=lambda te: _order(te[1][0]))
        for item in got:
            yield item
        if not got and bus.embedded:
            idle += 1
            await anyio.sleep(min(0.001 * 2 ** min(idle, 6), 0.05))
        elif got:
            idle = 0
