"""The consume engine: one agent's consumer groups, read, handled, acked.

A ``Consumer`` serves one agent (one consumer group per topic) under one consumer name.
It reads its own pending entries first, then new ones; reclaims entries that sat idle on
dead consumers; keeps what it holds leased (from a thread: ``leases.LeaseKeeper``) so a
live handler is never stolen whatever it does to the event loop; retries failures with
backoff; dead-letters poison and garbage; writes every terminal status together with the
ack (``acks.Acker``); and rides out connection loss and transient server errors.

Entries are known by (topic, entry id): entry ids repeat across streams (two topics
written in the same millisecond both get ``T-0``). A consumer holds at most
``2 * concurrency + 10`` entries that still need work (running, or waiting for a slot or
a retry), so a backlog of failing signals can never be pulled into memory; entries that
only wait for their ack have a bound of their own, ten times larger, so that acks in
flight never slow reading down.

Round trips per read batch: one XREADGROUP, one DELIVER script (status + acks of entries
that need no handler), and the terminal writes of many handlers folded into one FINISH
script per topic by the flusher.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus

from ..errors import DecodeError, HandlerTimeout, Reject, Retry
from . import scripts
from .acks import Acker, Op, clean_text, safe_decision_id
from .backoff import Backoff, retry_delay
from .codec import decode, entry_signal_id, entry_target
from .delivery import Delivery as Delivery
from .delivery import Handler as Handler
from .delivery import Held, Slots, Stats
from .delivery import new_consumer_name as new_consumer_name
from .faults import describe, is_transient, ride_out, type_name
from .keys import TopicKeys, check_agent
from .leases import LeaseKeeper, Running

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["Consumer", "Delivery", "Handler", "Slots", "Stats", "new_consumer_name"]

log = structlog.get_logger(__name__)

_RELEASE_CHUNK = 500

Batch = Sequence[tuple[str, Sequence[tuple[bytes, dict[bytes, bytes] | None]]]]


def _cancelled_from_outside(exc: BaseException) -> bool:
    """True when ``exc`` is a cancellation of the running task itself (shutdown).

    A ``CancelledError`` a handler lets out because something *it* awaited was cancelled
    (an asyncio client's own timeout) is not ours: it is a failed attempt. On asyncio a
    real cancellation of the task shows in ``Task.cancelling()``.
    """
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio: assume the worst, never swallow cancellation
        return True
    return task is None or task.cancelling() > 0


class Consumer:
    """Consume ``agent``'s groups on the topics of ``handlers`` until stopped.

    :param slots: handler slots shared with the other consumers of the process.
    :param keeper: lease keeper shared with the other consumers of the process (a
        consumer without one runs its own).
    """

    def __init__(
        self,
        bus: Bus,
        agent: str,
        handlers: dict[str, Handler],
        *,
        concurrency: int | None = None,
        consumer_name: str | None = None,
        slots: Slots | None = None,
        keeper: LeaseKeeper | None = None,
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
        self.max_held = 2 * self.slots.limit + 10
        self.max_finishing = 10 * self.max_held
        self.stats = Stats()
        self._own_keeper = keeper is None
        self.keeper = keeper or LeaseKeeper(bus)
        self.acker = Acker(bus, agent, self.name, self._acked)

        self._held: dict[tuple[str, str], Held] = {}  # (topic, entry id), until acked
        self._finishing = 0  # of those, entries whose terminal op is queued
        self._ready: deque[Held] = deque()
        self._running = 0  # this consumer's handlers; the slots count every consumer's
        self._retries: list[tuple[float, int, Held]] = []
        self._seq = itertools.count()
        self._retry_added = anyio.Event()
        # Handlers run on a fixed pool of runner tasks that take entries straight from
        # ``_ready``; an idle runner parks on its own event. Spawning a task (or passing
        # through a channel) per message costs more than the trivial handlers the bus is
        # often used with.
        self._idle: list[anyio.Event] = []
        self._read_scope: anyio.CancelScope | None = None
        self._stopping = False
        self._claim_cursor: dict[str, str] = {}
        #: No reclaim before this (monotonic): after an outage, live consumers' entries
        #: look idle until their keepers renew them.
        self._reclaim_after = 0.0

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
        async with anyio.create_task_group() as outer:
            if self._own_keeper:
                await outer.start(self.keeper.run)
            await self._setup()
            task_status.started()
            log.info("consumer_started", agent=self.agent, consumer=self.name,
                     topics=[tk.topic for tk in self.topics], concurrency=self.slots.limit)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.acker.run)
                    tg.start_soon(self._maintenance)
                    tg.start_soon(self._retry_loop)
                    async with anyio.create_task_group() as htg:
                        for _ in range(self.slots.limit):
                            htg.start_soon(self._runner)
                        await self._read_loop()
                        await self._drain()
                        htg.cancel_scope.cancel()  # the runners are idle now, or past grace
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._finish_stop()
                outer.cancel_scope.cancel()

    # -- setup ----------------------------------------------------------------------------

    async def _setup(self) -> None:
        """Register the agent on its topics and create its groups (retrying while down)."""
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._ensure_groups("$")
                await self.bus.register_topics(tk.topic for tk in self.topics)
                return
            except Exception as exc:
                await ride_out(exc, backoff, log, "subscribe", consumer=self.name,
                               agent=self.agent)

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
            if isinstance(r, Exception) and "BUSYGROUP" not in describe(r):
                raise r

    # -- reading --------------------------------------------------------------------------

    def _capacity(self) -> int:
        """How many more entries this consumer may read now."""
        if self._finishing >= self.max_finishing:  # acks are not getting through
            return 0
        working = len(self._held) - self._finishing
        return min(self.slots.free - len(self._ready), self.max_held - working,
                   self.bus.settings.read_count)

    async def _wait_for_capacity(self) -> int:
        """Start what is ready, then wait until there is room to read; 0 when stopping."""
        while True:
            self._start_ready()
            if self._stopping:
                return 0
            room = self._capacity()
            if room > 0:
                return room
            await self.slots.wait()

    async def _read_loop(self) -> None:
        own: dict[str, str] | None = {tk.stream: "0" for tk in self.topics}
        backoff = Backoff()
        idle_polls = 0
        while not self._stopping:
            try:
                room = await self._wait_for_capacity()
                if not room:
                    return
                per_stream = max(1, room // len(self.topics))
                if own:  # own pending entries first (after a start, reconnect or NOGROUP)
                    batch = await self._read(own, per_stream, block=None)
                    got = dict((s, e) for s, e in batch)
                    for stream in list(own):
                        entries = got.get(stream, [])
                        if len(entries) < per_stream:
                            del own[stream]  # exhausted
                        else:
                            own[stream] = entries[-1][0].decode()
                    if batch:
                        await self._dispatch(batch, own_pending=True)
                else:
                    block = None if self.bus.embedded else int(
                        self.bus.settings.block_timeout * 1000
                    )
                    with anyio.CancelScope() as scope:
                        self._read_scope = scope
                        batch = await self._read(
                            {tk.stream: ">" for tk in self.topics}, per_stream, block=block
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
                if backoff.attempts:
                    self._resumed()
                backoff.reset()
            except Exception as exc:
                self._read_scope = None
                own = {tk.stream: "0" for tk in self.topics}
                if "NOGROUP" in describe(exc):
                    log.error("consumer_group_recreated", agent=self.agent, consumer=self.name,
                              error=describe(exc), hint="the group vanished (FLUSHALL, "
                              "failover?); re-reading the stream from the start, finished "
                              "signals are skipped")
                    await self._recreate_groups()
                elif is_transient(exc):
                    self.stats.reconnects += 1
                await ride_out(exc, backoff, log, "read", consumer=self.name, agent=self.agent)

    def _resumed(self) -> None:
        """Redis answers again: give live consumers' keepers time to renew first."""
        self._reclaim_after = time.monotonic() + self.bus.settings.claim_idle / 2
        log.info("connection_restored", consumer=self.name, agent=self.agent)

    async def _recreate_groups(self) -> None:
        try:
            await self._ensure_groups("0")
        except Exception as exc:
            log.warning("group_recreate_deferred", consumer=self.name, error=describe(exc))

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

    # -- dispatch -------------------------------------------------------------------------

    def _owner(self, tk: TopicKeys) -> tuple[str, str, str]:
        """Who holds entries of ``tk`` here, as the lease keeper knows it."""
        return tk.stream, self.agent, self.name

    async def _dispatch(self, batch: Batch, *, own_pending: bool = False) -> None:
        """Decode a read batch, mark it delivered in one round trip, queue what needs a handler."""
        settings = self.bus.settings
        now = time.time()
        calls: list[tuple[scripts.Script, list[str], list[Any]]] = []
        groups: list[tuple[TopicKeys, list[Held]]] = []
        for stream, entries in batch:
            tk = self._by_stream[stream]
            held: list[Held] = []
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                if (tk.topic, entry_id) in self._held:
                    continue  # already ours and in progress (re-read after reconnect)
                if not fields:  # deleted from the stream while pending: nothing to deliver
                    self.acker.queue(Op(tk.topic, entry_id, "~", "a"))
                    continue
                try:
                    signal = decode(fields, settings.max_payload_bytes)
                    only_for = entry_target(fields)
                except DecodeError as exc:
                    self._undecodable(tk, entry_id, fields, exc)
                    continue
                if only_for is not None and only_for != self.agent:
                    self.stats.skipped += 1  # a dead letter replayed for another target
                    self.acker.queue(Op(tk.topic, entry_id, "~", "a"))
                    continue
                h = Held(tk.topic, entry_id, signal)
                self._held[h.key] = h
                held.append(h)
            if held:
                self.keeper.hold(self._owner(tk), [h.entry_id for h in held])
                calls.append(self._deliver_call(tk, held, now))
                groups.append((tk, held))
        if not calls:
            return
        try:
            results = await scripts.run_many(self.bus.redis, calls)
            for result in results:
                if isinstance(result, Exception):
                    raise result
        except BaseException:
            for tk, held in groups:
                self._forget(tk, held)
            raise
        for (_, held), result in zip(groups, results, strict=True):
            for h, code in zip(held, result, strict=True):
                self._accept(h, int(code))
        if own_pending:
            log.info("pending_resumed", consumer=self.name, agent=self.agent,
                     entries=sum(len(e) for _, e in batch))

    def _forget(self, tk: TopicKeys, held: list[Held]) -> None:
        for h in held:
            self._held.pop(h.key, None)
        self.keeper.drop(self._owner(tk), [h.entry_id for h in held])
        self.slots.wake()

    def _deliver_call(
        self, tk: TopicKeys, held: list[Held], now: float
    ) -> tuple[scripts.Script, list[str], list[Any]]:
        settings = self.bus.settings
        packed = " ".join(
            f"{h.entry_id},{h.signal.id},{1 if h.signal.expires.timestamp() <= now else 0},"
            f"{0 if h.signal.targets and self.agent not in h.signal.targets else 1}"
            for h in held
        )
        ttl_ms = int((settings.signal_ttl + settings.status_grace) * 1000)
        args = [self.agent, self.name, int(now * 1000), ttl_ms, tk.status_prefix, packed]
        return scripts.DELIVER, [tk.stream], args

    def _accept(self, h: Held, code: int) -> None:
        """Act on the DELIVER verdict for one entry."""
        if code <= 0:
            self._forget(self.bus.keys.topic(h.topic), [h])
            if code == 0:
                self.stats.skipped += 1
            else:
                self.stats.expired += 1
                log.info("signal_expired", signal_id=h.signal.id, topic=h.topic,
                         agent=self.agent)
            return
        h.attempt = code
        h.started = False
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
        self.acker.queue(Op(tk.topic, entry_id, sid, "f", 1, "", "DecodeError",
                            clean_text(exc.reason)))

    # -- handling -------------------------------------------------------------------------

    def _start_ready(self) -> None:
        """Wake as many idle runners as there are entries ready and slots free."""
        wake = min(len(self._ready), self.slots.free, len(self._idle))
        for _ in range(wake):
            self._idle.pop().set()

    async def _runner(self) -> None:
        try:
            task: Any = asyncio.current_task()
        except RuntimeError:  # another event loop than asyncio's: no stall attribution
            task = None
        while True:
            while self._ready and self.slots.free > 0 and not self._stopping:
                h = self._ready.popleft()  # not started when stopping: _release() hands back
                self._running += 1
                self.slots.take()
                h.started = True
                try:
                    await self._handle(h, task)
                finally:
                    self._running -= 1
                    self.slots.give()
                    self._start_ready()
            parked = anyio.Event()
            self._idle.append(parked)
            await parked.wait()

    async def _handle(self, h: Held, task: Any) -> None:
        """Run one attempt. Whatever the handler raises is a failed attempt, except a
        cancellation of this very task (the consumer is stopping past its grace)."""
        delivery = Delivery(h.topic, h.entry_id, h.attempt, self.name, self.agent)
        handler = self.handlers[h.topic]
        timeout = self.bus.settings.handler_timeout
        self.keeper.running(task, Running(self.agent, h.topic, h.signal.id,
                                          getattr(handler, "__qualname__", repr(handler))))
        started = time.perf_counter()
        failure: BaseException | None = None
        decision_id: object = None
        try:
            if timeout is None:  # no scope: it costs more than a trivial handler
                decision_id = await handler(h.signal, delivery)
            else:
                with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                    decision_id = await handler(h.signal, delivery)
                if scope.cancel_called:
                    self.stats.timeouts += 1
                    failure = HandlerTimeout(timeout)
        except BaseException as exc:
            if _cancelled_from_outside(exc):
                raise
            failure = exc
        finally:
            self.keeper.finished(task)
            elapsed = time.perf_counter() - started
            self.stats.handler_seconds.append(elapsed)
            if len(self.stats.interval_seconds) < 100_000:
                self.stats.interval_seconds.append(elapsed)
        if failure is None:
            self.stats.processed += 1
            self._finish(h, Op(h.topic, h.entry_id, h.signal.id, "s", h.attempt,
                               safe_decision_id(decision_id)))
        elif isinstance(failure, Reject):
            self._fail(h, type_name(failure), _reason(failure))
        elif isinstance(failure, Retry):
            self._retry(h, failure, failure.delay)
        else:
            self._retry(h, failure, None)

    def _retry(self, h: Held, exc: BaseException, delay: float | None) -> None:
        settings = self.bus.settings
        if h.attempt >= settings.max_attempts:
            self._fail(h, type_name(exc), describe(exc, 4000))
            return
        if delay is None:
            delay = retry_delay(settings.retry_backoff, h.attempt, settings.retry_backoff_max)
        # Never wait past the signal's expiry: it is then expired, not retried.
        delay = min(delay, max(h.signal.expires.timestamp() - time.time(), 0.0) + 0.001)
        self.stats.retried += 1
        event, level = ("retry_requested", log.info) if isinstance(exc, Retry) else (
            "handler_failed", log.warning)
        level(event, agent=self.agent, topic=h.topic, signal_id=h.signal.id,
              attempt=h.attempt, max_attempts=settings.max_attempts,
              error_type=type_name(exc), error=describe(exc), retry_in=round(delay, 3))
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), h))
        self._retry_added.set()

    def _fail(self, h: Held, error_type: str, error: str) -> None:
        self.stats.failed += 1
        self.stats.interval_failed += 1
        log.error("signal_dead_lettered", agent=self.agent, topic=h.topic,
                  signal_id=h.signal.id, attempts=h.attempt, error_type=error_type,
                  error=error[:500])
        self._finish(h, Op(h.topic, h.entry_id, h.signal.id, "f", h.attempt, "",
                           clean_text(error_type), clean_text(error)))

    def _finish(self, h: Held, op: Op) -> None:
        if not h.finishing:
            h.finishing = True
            self._finishing += 1
        self.acker.queue(op)

    def _acked(self, ops: list[Op]) -> None:
        """The acker wrote these: forget the entries (and stop leasing them)."""
        by_topic: dict[str, list[str]] = {}
        for op in ops:
            h = self._held.pop((op.topic, op.entry_id), None)
            if h is not None:
                if h.finishing:
                    self._finishing -= 1
                by_topic.setdefault(op.topic, []).append(op.entry_id)
        for topic, ids in by_topic.items():
            self.keeper.drop(self._owner(self.bus.keys.topic(topic)), ids)
        if by_topic:
            self.slots.wake()  # room to hold more

    async def _retry_loop(self) -> None:
        """Re-deliver entries whose backoff elapsed (they stay leased meanwhile)."""
        backoff = Backoff()
        while not self._stopping:
            await anyio.lowlevel.checkpoint()
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
            due: list[Held] = []
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[2])
            try:
                await self._redeliver(due)
                backoff.reset()
            except Exception as exc:
                for h in due:
                    heapq.heappush(self._retries, (time.monotonic(), next(self._seq), h))
                await ride_out(exc, backoff, log, "retry", consumer=self.name,
                               agent=self.agent)

    async def _redeliver(self, due: list[Held]) -> None:
        by_topic: dict[str, list[Held]] = {}
        for h in due:
            by_topic.setdefault(h.topic, []).append(h)
        now = time.time()
        calls = [self._deliver_call(self.bus.keys.topic(t), held, now)
                 for t, held in by_topic.items()]
        results = await scripts.run_many(self.bus.redis, calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        for held, result in zip(by_topic.values(), results, strict=True):
            for h, code in zip(held, result, strict=True):
                self._accept(h, int(code))
        self._start_ready()

    # -- leases and reclaim ---------------------------------------------------------------

    async def _maintenance(self) -> None:
        """Reclaim idle entries of dead consumers; report entries whose lease was lost.

        A pass runs every ``claim_idle / 2``; a pass that found more than it could take
        runs again as soon as there is room, so a dead consumer's backlog drains at the
        speed of the handlers, not of the timer.
        """
        claim_idle = self.bus.settings.claim_idle
        every = max(claim_idle / 2, 0.02)
        backoff = Backoff()
        next_pass = time.monotonic()
        while not self._stopping:
            more = False
            try:
                self._check_lost()
                now = time.monotonic()
                if now >= max(next_pass, self._reclaim_after) and self._capacity() > 0:
                    more = await self._reclaim()
                    next_pass = now + every
                backoff.reset()
            except Exception as exc:
                await ride_out(exc, backoff, log, "reclaim", consumer=self.name,
                               agent=self.agent)
                continue
            if more:
                with anyio.move_on_after(every):
                    while self._capacity() <= 0 and not self._stopping:
                        await self.slots.wait()
                next_pass = time.monotonic()
            else:
                await anyio.sleep(min(self.keeper.interval, every))

    def _check_lost(self) -> None:
        for tk in self.topics:
            lost = self.keeper.take_lost(self._owner(tk))
            real = [eid for eid in lost
                    if (h := self._held.get((tk.topic, eid))) is not None and not h.finishing]
            if real:
                log.warning("lease_lost", consumer=self.name, agent=self.agent, topic=tk.topic,
                            entries=real[:20], count=len(real),
                            hint="another consumer took these over: this process looked "
                                 "dead for longer than claim_idle")
                self.keeper.drop(self._owner(tk), real)

    async def _reclaim(self) -> bool:
        """One reclaim pass; True when there is more to take than fitted."""
        room = self._capacity()
        if room <= 0:
            return True
        budget = min(room, self.bus.settings.reclaim_budget)
        per_topic = max(1, budget // len(self.topics))
        min_idle = int(self.bus.settings.claim_idle * 1000)
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            for tk in self.topics:
                pipe.xautoclaim(tk.stream, self.agent, self.name, min_idle,
                                start_id=self._claim_cursor.get(tk.stream, "0-0"),
                                count=per_topic)
            results = await pipe.execute(raise_on_error=False)
        batch = []
        more = False
        for tk, result in zip(self.topics, results, strict=True):
            if isinstance(result, Exception):
                if is_transient(result):
                    raise result
                continue  # NOGROUP: the read loop recreates the group
            cursor, entries = result[0], result[1]
            cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            self._claim_cursor[tk.stream] = cursor
            if len(result) > 2 and result[2]:
                log.warning("reclaimed_entries_were_deleted", consumer=self.name,
                            topic=tk.topic, entries=len(result[2]))
            more = more or (cursor != "0-0" and len(entries) >= per_topic)
            entries = [(eid, f) for eid, f in entries if (tk.topic, eid.decode()) not in self._held]
            if entries:
                batch.append((tk.stream, entries))
        if batch:
            count = sum(len(e) for _, e in batch)
            self.stats.reclaimed += count
            log.info("entries_reclaimed", consumer=self.name, agent=self.agent, entries=count)
            await self._dispatch(batch)
            self._start_ready()
        return more

    # -- shutdown -------------------------------------------------------------------------

    async def _release(self, extra: Sequence[Held] = ()) -> None:
        """Hand back entries read but not run, at once.

        They stay in this consumer's pending list (only a live consumer can take them),
        with their idle time set past ``claim_idle`` so the next reclaim pass of any
        live consumer takes them instead of waiting for them to age. An attempt counted
        for an entry whose handler never started is given back: stopping a worker never
        spends an attempt.
        """
        everything = [*self._ready, *(h for _, _, h in self._retries), *extra]
        self._ready.clear()
        self._retries.clear()
        unique = {id(h): h for h in everything}.values()
        waiting = [h for h in unique if self._held.get(h.key) is h and not h.finishing]
        if not waiting:
            return
        by_topic: dict[str, list[Held]] = {}
        for h in waiting:
            by_topic.setdefault(h.topic, []).append(h)
            self._held.pop(h.key, None)
        for topic, held in by_topic.items():
            self.keeper.drop(self._owner(self.bus.keys.topic(topic)), [h.entry_id for h in held])
        settings = self.bus.settings
        idle = int(settings.claim_idle * 1000) + 1
        now_ms = int(time.time() * 1000)
        calls = []
        for topic, held in by_topic.items():
            tk = self.bus.keys.topic(topic)
            for start in range(0, len(held), _RELEASE_CHUNK):
                packed = " ".join(f"{h.entry_id},{h.signal.id},{0 if h.started else 1}"
                                  for h in held[start : start + _RELEASE_CHUNK])
                calls.append((scripts.RELEASE, [tk.stream],
                              [self.agent, self.name, now_ms, tk.status_prefix, idle, packed]))
        try:
            results = await scripts.run_many(self.bus.redis, calls)
            self.stats.released += sum(int(r) for r in results if not isinstance(r, Exception))
        except Exception as exc:  # they will age into reclaim anyway
            log.warning("release_failed", consumer=self.name, error=describe(exc))

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

    async def _finish_stop(self) -> None:
        """Flush what finished, hand back everything else (shielded, bounded)."""
        with anyio.move_on_after(10):
            try:
                await self.acker.flush()
            except Exception as exc:
                log.warning("final_ack_failed", consumer=self.name, error=describe(exc),
                            left=len(self.acker))
        with anyio.move_on_after(5):
            unfinished = [h for h in self._held.values() if not h.finishing]
            await self._release(unfinished)
        log.info("consumer_stopped", agent=self.agent, consumer=self.name,
                 processed=self.stats.processed, failed=self.stats.failed,
                 left_pending=len(self._held))


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    return describe(exc, 4000)
