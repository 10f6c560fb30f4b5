"""The consume engine: one agent's consumer groups, read, handled, acked.

A ``Consumer`` serves one agent (one consumer group per topic) under one consumer name.
It reads its own pending entries first, then new ones; reclaims entries that sat idle on
dead consumers; leases what it holds so a long handler is never stolen while alive;
retries failures with backoff; dead-letters poison and garbage; writes every terminal
status together with the ack; and rides out connection loss.

Round trips per read batch: one XREADGROUP, one DELIVER script (status + acks of entries
that need no handler), and the terminal writes of many handlers folded into one FINISH
script per topic by the flusher.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus
from redis import exceptions as rexc

from ..errors import DecodeError, Reject, Retry
from . import scripts
from .codec import decode, entry_signal_id
from .keys import TopicKeys, check_agent
from .signal import Signal

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["Consumer", "Delivery", "Handler", "Slots", "Stats", "new_consumer_name"]

log = structlog.get_logger(__name__)

_ERROR_LIMIT = 4000
_FINISH_CHUNK = 500
_RECONNECT_CAP = 5.0

_CONNECTION_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.:~/-]")


def _safe_id(decision_id: str | None) -> str:
    """A decision id fit for the packed FINISH argument (no ',' or spaces)."""
    return _UNSAFE_ID.sub("_", decision_id[:200]) if decision_id else ""


def new_consumer_name() -> str:
    """``host:pid:random``, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler is told about the delivery it is running for."""

    topic: str
    entry_id: str
    attempt: int
    consumer: str
    agent: str


#: A handler gets the signal and its delivery; it may return a decision id for the status.
Handler = Callable[[Signal, Delivery], Awaitable[str | None]]


@dataclass(slots=True)
class _Held:
    """An entry this consumer holds: waiting for a slot, running, or waiting to retry."""

    topic: str
    entry_id: str
    signal: Signal
    attempt: int = 0


@dataclass(slots=True)
class _Op:
    """A terminal outcome waiting to be flushed with its ack."""

    entry_id: str
    signal_id: str  # "~" when the entry has no usable signal id
    state: str
    attempts: int = 0
    decision_id: str = ""
    error_type: str = ""
    error: str = ""


class Slots:
    """Handler slots shared by every consumer of one worker process.

    ``Settings.concurrency`` bounds in-flight handlers per process, whatever the number of
    agents in it: each agent's consumer takes slots from the same pool.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("concurrency must be at least 1")
        self.limit = limit
        self.used = 0
        self._freed = anyio.Event()

    @property
    def free(self) -> int:
        return self.limit - self.used

    def take(self) -> None:
        self.used += 1

    def give(self) -> None:
        self.used -= 1
        self.wake()

    def wake(self) -> None:
        """Wake every task waiting for a slot."""
        self._freed.set()
        self._freed = anyio.Event()

    async def wait(self) -> None:
        await self._freed.wait()


@dataclass(slots=True)
class Stats:
    """Counters of one consumer since it started."""

    processed: int = 0
    failed: int = 0
    expired: int = 0
    skipped: int = 0
    retried: int = 0
    reclaimed: int = 0
    undecodable: int = 0
    reconnects: int = 0
    #: Handler durations: the most recent 10,000, and those since ``take_interval()``.
    handler_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000),
                                          repr=False)
    interval_seconds: list[float] = field(default_factory=list, repr=False)
    interval_failed: int = 0

    def take_interval(self) -> tuple[list[float], int]:
        """Durations and failures since the last call (for per-heartbeat metrics)."""
        taken, failed = self.interval_seconds, self.interval_failed
        self.interval_seconds, self.interval_failed = [], 0
        return taken, failed


class Consumer:
    """Consume ``agent``'s groups on the topics of ``handlers`` until stopped."""

    def __init__(
        self,
        bus: Bus,
        agent: str,
        handlers: dict[str, Handler],
        *,
        concurrency: int | None = None,
        consumer_name: str | None = None,
        slots: Slots | None = None,
    ) -> None:
        check_agent(agent)
        if not handlers:
            raise ValueError(f"consumer for {agent!r} needs at least one topic handler")
        self.bus = bus
        self.agent = agent
        self.handlers = dict(handlers)
        self.topics: list[TopicKeys] = [bus.keys.topic(t) for t in sorted(handlers)]
        self._by_stream = {tk.stream: tk for tk in self.topics}
        self.name = consumer_name or new_consumer_name()
        self.slots = slots or Slots(concurrency or bus.settings.concurrency)
        self.stats = Stats()

        self._held: dict[str, _Held] = {}  # entry id -> entry, until its ack is flushed
        self._ready: deque[_Held] = deque()
        self._running = 0  # this consumer's handlers; the slots count every consumer's
        self._retries: list[tuple[float, int, _Held]] = []
        self._seq = itertools.count()
        self._ops: dict[str, list[_Op]] = {}
        self._flush_wanted = anyio.Event()
        self._retry_added = anyio.Event()
        # Handlers run on a fixed pool of runner tasks that take entries straight from
        # ``_ready``; an idle runner parks on its own event. Spawning a task (or passing
        # through a channel) per message costs more than the trivial handlers the bus is
        # often used with.
        self._idle: list[anyio.Event] = []
        self._serving = False
        self._read_scope: anyio.CancelScope | None = None
        self._stopping = False
        self._claim_cursor: dict[str, str] = {}

    # -- public ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self._running

    @property
    def held(self) -> int:
        """Entries held: running, waiting for a slot or a retry, or waiting for their ack."""
        return len(self._held)

    def stop(self) -> None:
        """Stop reading; in-flight handlers get ``shutdown_grace`` seconds to finish."""
        self._stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()
        self.slots.wake()
        self._retry_added.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()`` or cancellation; ``task_status.started()`` once subscribed."""
        await self._setup()
        task_status.started()
        log.info("consumer_started", agent=self.agent, consumer=self.name,
                 topics=[tk.topic for tk in self.topics], concurrency=self.slots.limit)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flusher)
                tg.start_soon(self._maintenance)
                tg.start_soon(self._retry_loop)
                async with anyio.create_task_group() as htg:
                    for _ in range(self.slots.limit):
                        htg.start_soon(self._runner)
                    self._serving = True
                    await self._read_loop()
                    await self._drain()
                    htg.cancel_scope.cancel()  # the runners are idle now, or past grace
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self._flush_all()
            log.info("consumer_stopped", agent=self.agent, consumer=self.name,
                     processed=self.stats.processed, failed=self.stats.failed,
                     left_pending=len(self._held))

    # -- setup ----------------------------------------------------------------------------

    async def _setup(self) -> None:
        """Register the agent on its topics and create its groups (retrying while down)."""
        delay = 0.0
        while True:
            try:
                await self._ensure_groups("$")
                await self.bus.register_topics(tk.topic for tk in self.topics)
                return
            except _CONNECTION_ERRORS as exc:
                delay = self._next_delay(delay)
                log.warning("redis_unreachable", consumer=self.name, error=str(exc),
                            retry_in=round(delay, 2))
                await anyio.sleep(delay)

    async def _ensure_groups(self, start: str) -> None:
        """Create missing groups: at ``start`` for a new subscriber, but from the stream's
        beginning when a group existed before (created at publish time for a target that
        never ran, then destroyed), so no signal already owed to the agent is skipped."""
        redis = self.bus.redis
        async with redis.pipeline(transaction=False) as pipe:
            for tk in self.topics:
                pipe.sismember(tk.groups, self.agent)
            known = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for tk, existed in zip(self.topics, known, strict=True):
                pipe.sadd(tk.subs, self.agent)
                pipe.xgroup_create(tk.stream, self.agent, id="0" if existed else start,
                                   mkstream=True)
                pipe.sadd(tk.groups, self.agent)
            results = await pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, _CONNECTION_ERRORS):
                raise r
            if isinstance(r, Exception) and "BUSYGROUP" not in str(r):
                raise r

    # -- reading --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        cursors: dict[str, str] | None = {tk.stream: "0" for tk in self.topics}
        delay = 0.0
        idle_polls = 0
        while not self._stopping:
            try:
                free = await self._wait_for_slot()
                if self._stopping:
                    return
                count = max(1, min(self.bus.settings.read_count, free) // len(self.topics))
                if cursors is not None:  # own pending entries first
                    batch = await self._read(cursors, count, block=None)
                    if not batch:
                        cursors = None
                        continue
                    for stream, entries in batch:
                        cursors[stream] = entries[-1][0].decode()
                    await self._dispatch(batch, own_pending=True)
                else:
                    block = None if self.bus.embedded else int(
                        self.bus.settings.block_timeout * 1000
                    )
                    with anyio.CancelScope() as scope:
                        self._read_scope = scope
                        batch = await self._read(
                            {tk.stream: ">" for tk in self.topics}, count, block=block
                        )
                    self._read_scope = None
                    if scope.cancelled_caught:
                        continue
                    if batch:
                        idle_polls = 0
                        await self._dispatch(batch)
                    elif self.bus.embedded:  # the embedded backend cannot block: poll
                        idle_polls += 1
                        await anyio.sleep(min(0.001 * 2 ** min(idle_polls, 6), 0.05))
                delay = 0.0
            except _CONNECTION_ERRORS as exc:
                self.stats.reconnects += 1
                delay = self._next_delay(delay)
                log.warning("connection_lost", consumer=self.name, error=str(exc),
                            retry_in=round(delay, 2))
                await anyio.sleep(delay)
                cursors = {tk.stream: "0" for tk in self.topics}
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                delay = self._next_delay(delay)
                log.error("consumer_group_recreated", agent=self.agent, consumer=self.name,
                          error=str(exc), hint="the group vanished (FLUSHALL, failover?); "
                          "re-reading the stream from the start, finished signals are skipped")
                await self._recreate_groups()
                await anyio.sleep(delay)
                cursors = {tk.stream: "0" for tk in self.topics}

    async def _recreate_groups(self) -> None:
        try:
            await self._ensure_groups("0")
        except _CONNECTION_ERRORS:
            pass

    async def _read(
        self, streams: dict[str, str], count: int, *, block: int | None
    ) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes] | None]]]]:
        raw = await self.bus.redis.xreadgroup(
            self.agent, self.name, streams, count=count, block=block
        )
        out = []
        for stream, entries in raw or []:
            if entries:
                name = stream.decode() if isinstance(stream, bytes) else stream
                out.append((name, entries))
        return out

    async def _wait_for_slot(self) -> int:
        """Start what is ready, then wait until a handler slot is free; returns free slots."""
        while True:
            self._start_ready()
            free = self.slots.free
            if (free > 0 and not self._ready) or self._stopping:
                return free
            await self.slots.wait()

    # -- dispatch -------------------------------------------------------------------------

    async def _dispatch(
        self,
        batch: Sequence[tuple[str, Sequence[tuple[bytes, dict[bytes, bytes] | None]]]],
        *,
        own_pending: bool = False,
    ) -> None:
        """Decode a read batch, mark it delivered in one round trip, queue what needs a handler."""
        settings = self.bus.settings
        now = time.time()
        calls: list[tuple[scripts.Script, list[str], list[Any]]] = []
        groups: list[list[_Held]] = []
        for stream, entries in batch:
            tk = self._by_stream[stream]
            held: list[_Held] = []
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                if entry_id in self._held:
                    continue  # already ours and in progress (re-read after reconnect)
                if not fields:  # deleted from the stream while pending: nothing to deliver
                    self._queue(tk, _Op(entry_id, "~", "a"))
                    continue
                try:
                    signal = decode(fields, settings.max_payload_bytes)
                except DecodeError as exc:
                    self._undecodable(tk, entry_id, fields, exc)
                    continue
                h = _Held(tk.topic, entry_id, signal)
                self._held[entry_id] = h
                held.append(h)
            if held:
                calls.append(self._deliver_call(tk, held, now))
                groups.append(held)
        if not calls:
            return
        try:
            results = await scripts.run_many(self.bus.redis, calls)
        except BaseException:
            for held in groups:
                for h in held:
                    self._held.pop(h.entry_id, None)
            raise
        for held, result in zip(groups, results, strict=True):
            if isinstance(result, Exception):
                for h in held:
                    self._held.pop(h.entry_id, None)
                raise result
            for h, code in zip(held, result, strict=True):
                self._accept(h, int(code))
        if own_pending:
            log.info("pending_resumed", consumer=self.name,
                     entries=sum(len(e) for _, e in batch))

    def _accept(self, h: _Held, code: int) -> None:
        """Act on the DELIVER verdict for one entry."""
        if code <= 0:
            self._held.pop(h.entry_id, None)
            if code == 0:
                self.stats.skipped += 1
            else:
                self.stats.expired += 1
                log.info("signal_expired", signal_id=h.signal.id, topic=h.topic,
                         agent=self.agent)
            return
        h.attempt = code
        if code > self.bus.settings.max_attempts:
            # Delivered more often than allowed without ever finishing: the handler (or the
            # process running it) keeps dying on this signal.
            self._fail(h, "MaxAttemptsExceeded",
                       f"delivered {code - 1} times without finishing "
                       f"(max_attempts={self.bus.settings.max_attempts})")
            return
        self._ready.append(h)

    def _undecodable(
        self, tk: TopicKeys, entry_id: str, fields: dict[bytes, bytes], exc: DecodeError
    ) -> None:
        self.stats.undecodable += 1
        log.error("entry_undecodable", topic=tk.topic, entry_id=entry_id, agent=self.agent,
                  reason=exc.reason)
        sid = entry_signal_id(fields) or "~"
        self._queue(tk, _Op(entry_id, sid, "f", 1, "", "DecodeError", exc.reason))

    # -- handling -------------------------------------------------------------------------

    def _start_ready(self) -> None:
        """Wake as many idle runners as there are entries ready and slots free."""
        wake = min(len(self._ready), self.slots.free, len(self._idle))
        for _ in range(wake):
            self._idle.pop().set()

    async def _runner(self) -> None:
        while True:
            while self._ready and self.slots.free > 0 and not self._stopping:
                h = self._ready.popleft()  # not started when stopping: _release() hands back
                self._running += 1
                self.slots.take()
                await self._handle(h)
            parked = anyio.Event()
            self._idle.append(parked)
            await parked.wait()

    async def _handle(self, h: _Held) -> None:
        delivery = Delivery(h.topic, h.entry_id, h.attempt, self.name, self.agent)
        handler = self.handlers[h.topic]
        started = time.perf_counter()
        try:
            decision_id = await handler(h.signal, delivery)
        except Reject as exc:
            self._fail(h, type(exc).__name__, exc.reason)
        except Retry as exc:
            self._retry(h, exc, exc.delay)
        except Exception as exc:
            self._retry(h, exc, None)
        else:
            self.stats.processed += 1
            tk = self.bus.keys.topic(h.topic)
            self._queue(tk, _Op(h.entry_id, h.signal.id, "s", h.attempt,
                                _safe_id(decision_id)))
        finally:
            elapsed = time.perf_counter() - started
            self.stats.handler_seconds.append(elapsed)
            if len(self.stats.interval_seconds) < 100_000:
                self.stats.interval_seconds.append(elapsed)
            self._running -= 1
            self.slots.give()
            self._start_ready()

    def _retry(self, h: _Held, exc: Exception, delay: float | None) -> None:
        settings = self.bus.settings
        if h.attempt >= settings.max_attempts:
            self._fail(h, type(exc).__name__, str(exc) or repr(exc))
            return
        if delay is None:
            delay = min(settings.retry_backoff * 2 ** (h.attempt - 1), settings.retry_backoff_max)
        self.stats.retried += 1
        event, level = ("retry_requested", log.info) if isinstance(exc, Retry) else (
            "handler_failed", log.warning)
        level(event, agent=self.agent, topic=h.topic, signal_id=h.signal.id,
              attempt=h.attempt, max_attempts=settings.max_attempts,
              error_type=type(exc).__name__, error=str(exc)[:500], retry_in=round(delay, 3))
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), h))
        self._retry_added.set()

    def _fail(self, h: _Held, error_type: str, error: str) -> None:
        self.stats.failed += 1
        self.stats.interval_failed += 1
        log.error("signal_dead_lettered", agent=self.agent, topic=h.topic,
                  signal_id=h.signal.id, attempts=h.attempt, error_type=error_type,
                  error=error[:500])
        tk = self.bus.keys.topic(h.topic)
        self._queue(tk, _Op(h.entry_id, h.signal.id, "f", h.attempt, "",
                            error_type, error[:_ERROR_LIMIT]))

    async def _retry_loop(self) -> None:
        """Re-deliver entries whose backoff elapsed (they stay leased meanwhile)."""
        while True:
            if not self._retries:
                self._retry_added = anyio.Event()
                await self._retry_added.wait()
                continue
            wait = self._retries[0][0] - time.monotonic()
            if wait > 0:
                self._retry_added = anyio.Event()
                with anyio.move_on_after(wait):
                    await self._retry_added.wait()
                continue
            due: list[_Held] = []
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[2])
            if self._stopping:
                continue  # left pending for another consumer
            try:
                await self._redeliver(due)
            except _CONNECTION_ERRORS as exc:
                log.warning("retry_deferred", consumer=self.name, error=str(exc))
                for h in due:
                    heapq.heappush(self._retries, (time.monotonic() + 1.0, next(self._seq), h))
                await anyio.sleep(1.0)

    def _deliver_call(
        self, tk: TopicKeys, held: list[_Held], now: float
    ) -> tuple[scripts.Script, list[str], list[Any]]:
        settings = self.bus.settings
        packed = " ".join(
            f"{h.entry_id},{h.signal.id},{1 if h.signal.expires.timestamp() <= now else 0}"
            for h in held
        )
        ttl_ms = int((settings.signal_ttl + settings.status_grace) * 1000)
        args = [self.agent, self.name, int(now * 1000), ttl_ms, tk.status_prefix, packed]
        return scripts.DELIVER, [tk.stream], args

    async def _redeliver(self, due: list[_Held]) -> None:
        by_topic: dict[str, list[_Held]] = {}
        for h in due:
            by_topic.setdefault(h.topic, []).append(h)
        now = time.time()
        calls = [self._deliver_call(self.bus.keys.topic(t), held, now)
                 for t, held in by_topic.items()]
        results = await scripts.run_many(self.bus.redis, calls)
        for held, result in zip(by_topic.values(), results, strict=True):
            if isinstance(result, Exception):
                raise result
            for h, code in zip(held, result, strict=True):
                self._accept(h, int(code))
        self._start_ready()

    # -- acks -----------------------------------------------------------------------------

    def _queue(self, tk: TopicKeys, op: _Op) -> None:
        self._ops.setdefault(tk.topic, []).append(op)
        self._flush_wanted.set()

    async def _flusher(self) -> None:
        """Group commit: every terminal outcome queued while a flush runs goes in the next."""
        delay = 0.0
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = anyio.Event()
            try:
                await self._flush_all()
                delay = 0.0
            except _CONNECTION_ERRORS as exc:
                delay = self._next_delay(delay)
                log.warning("ack_deferred", consumer=self.name, error=str(exc),
                            retry_in=round(delay, 2))
                await anyio.sleep(delay)
                self._flush_wanted.set()

    async def _flush_all(self) -> None:
        if not self._ops:
            return
        ops, self._ops = self._ops, {}
        now_ms = int(time.time() * 1000)
        calls: list[tuple[scripts.Script, list[str], list[Any]]] = []
        chunks: list[tuple[str, list[_Op]]] = []
        for topic, topic_ops in ops.items():
            tk = self.bus.keys.topic(topic)
            for start in range(0, len(topic_ops), _FINISH_CHUNK):
                chunk = topic_ops[start : start + _FINISH_CHUNK]
                args: list[Any] = [self.agent, self.name, now_ms, tk.status_prefix, ""]
                packed = []
                for op in chunk:
                    k = 0
                    if op.error_type or op.error:
                        k = len(args) + 1  # Lua's 1-based index of the error type
                        args += [op.error_type, op.error]
                    packed.append(f"{op.entry_id},{op.signal_id},{op.state},{op.attempts},"
                                  f"{op.decision_id or '-'},{k}")
                args[4] = " ".join(packed)
                calls.append((scripts.FINISH, [tk.stream, tk.dlq], args))
                chunks.append((topic, chunk))
        try:
            results = await scripts.run_many(self.bus.redis, calls)
        except BaseException:
            self._requeue(ops)
            raise
        failed: dict[str, list[_Op]] = {}
        for (topic, chunk), result in zip(chunks, results, strict=True):
            if isinstance(result, Exception):
                failed.setdefault(topic, []).extend(chunk)
                continue
            for op in chunk:
                self._held.pop(op.entry_id, None)
        if failed:
            self._requeue(failed)
            first = next(r for r in results if isinstance(r, Exception))
            if isinstance(first, _CONNECTION_ERRORS):
                raise first
            log.error("ack_failed", consumer=self.name, error=str(first))
            raise rexc.ConnectionError(str(first))  # retried by the flusher's backoff

    def _requeue(self, ops: dict[str, list[_Op]]) -> None:
        for topic, topic_ops in ops.items():
            self._ops.setdefault(topic, [])[:0] = topic_ops

    # -- leases and reclaim ---------------------------------------------------------------

    async def _maintenance(self) -> None:
        """Lease held entries every claim_idle/3; reclaim idle ones every claim_idle/2."""
        claim_idle = self.bus.settings.claim_idle
        lease_every = max(claim_idle / 3, 0.01)
        reclaim_every = max(claim_idle / 2, 0.02)
        next_reclaim = time.monotonic()
        while True:
            try:
                await self._lease()
                if time.monotonic() >= next_reclaim and not self._stopping:
                    next_reclaim = time.monotonic() + reclaim_every
                    await self._reclaim()
            except (*_CONNECTION_ERRORS, rexc.ResponseError) as exc:
                log.debug("maintenance_deferred", consumer=self.name, error=str(exc))
            await anyio.sleep(lease_every)

    async def _lease(self) -> None:
        by_topic: dict[str, list[str]] = {}
        for h in self._held.values():
            by_topic.setdefault(h.topic, []).append(h.entry_id)
        if not by_topic:
            return
        calls = []
        for topic, ids in by_topic.items():
            tk = self.bus.keys.topic(topic)
            calls.append((scripts.LEASE, [tk.stream], [self.agent, self.name, *ids]))
        for result in await scripts.run_many(self.bus.redis, calls):
            if isinstance(result, Exception):
                raise result
            if result:
                log.warning("lease_lost", consumer=self.name,
                            entries=[r.decode() for r in result][:20])

    async def _reclaim(self) -> None:
        free = self.slots.free - len(self._ready)
        if free <= 0:
            return
        budget = min(free, self.bus.settings.reclaim_budget)
        min_idle = int(self.bus.settings.claim_idle * 1000)
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            for tk in self.topics:
                pipe.xautoclaim(tk.stream, self.agent, self.name, min_idle,
                                start_id=self._claim_cursor.get(tk.stream, "0-0"), count=budget)
            results = await pipe.execute(raise_on_error=False)
        batch = []
        for tk, result in zip(self.topics, results, strict=True):
            if isinstance(result, Exception):
                if isinstance(result, _CONNECTION_ERRORS):
                    raise result
                continue  # NOGROUP: the read loop recreates the group
            cursor, entries = result[0], result[1]
            self._claim_cursor[tk.stream] = cursor.decode() if isinstance(cursor, bytes) else cursor
            entries = [(eid, f) for eid, f in entries if eid.decode() not in self._held]
            if entries:
                batch.append((tk.stream, entries))
        if batch:
            count = sum(len(e) for _, e in batch)
            self.stats.reclaimed += count
            log.info("entries_reclaimed", consumer=self.name, agent=self.agent, entries=count)
            await self._dispatch(batch)
            self._start_ready()

    # -- shutdown -------------------------------------------------------------------------

    async def _release(self) -> None:
        """Hand entries read but never started back at once.

        They stay in this consumer's pending list (only a live consumer can take them),
        with their idle time set past ``claim_idle`` so the next reclaim pass of any
        live consumer takes them instead of waiting for them to age.
        """
        waiting = [*self._ready, *(h for _, _, h in self._retries)]
        self._ready.clear()
        self._retries.clear()
        if not waiting:
            return
        idle = int(self.bus.settings.claim_idle * 1000) + 1
        by_topic: dict[str, list[str]] = {}
        for h in waiting:
            by_topic.setdefault(h.topic, []).append(h.entry_id)
            self._held.pop(h.entry_id, None)
        try:
            async with self.bus.redis.pipeline(transaction=False) as pipe:
                for topic, ids in by_topic.items():
                    pipe.xclaim(self.bus.keys.topic(topic).stream, self.agent, self.name, 0,
                                ids, idle=idle, justid=True)
                await pipe.execute()
        except _CONNECTION_ERRORS as exc:  # they will age into reclaim anyway
            log.warning("release_failed", consumer=self.name, error=str(exc))

    async def _drain(self) -> None:
        """Give running handlers the grace period; the caller cancels what is left."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._release()
        grace = self.bus.settings.shutdown_grace
        with anyio.move_on_after(grace):
            while self._running:
                await self.slots.wait()
        if self._running:
            log.warning("handlers_cancelled", consumer=self.name, running=self._running,
                        grace=grace)

    def _next_delay(self, previous: float) -> float:
        """Exponential backoff with full jitter, 0.1 s doubling up to 5 s."""
        ceiling = min(max(previous * 2, 0.1), _RECONNECT_CAP)
        return random.uniform(ceiling / 2, ceiling)
