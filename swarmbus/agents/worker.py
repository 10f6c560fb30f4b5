"""``Worker``: runs one or more agents in one process, with heartbeats and graceful stop."""

from __future__ import annotations

import inspect
import os
import signal as signals
import socket
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import ValidationError

from ..bus.backoff import Backoff
from ..bus.consume import Consumer, Delivery, Handler, Slots, new_consumer_name
from ..bus.faults import describe, ride_out
from ..bus.leases import LeaseKeeper
from ..errors import ConfigurationError, InvalidData
from .agent import Agent, Route
from .context import Context
from .memory import memory_for
from .registry import Heartbeat, IntervalMetrics, beat, forget

if TYPE_CHECKING:
    from ..bus.connection import Bus
    from ..bus.signal import Signal

__all__ = ["Worker"]

log = structlog.get_logger(__name__)


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'data'}: {e['msg']}" for e in exc.errors()[:5]
    )


class Worker:
    """Run ``agents`` against ``bus`` until ``stop()``, cancellation or SIGINT/SIGTERM.

    All agents of one worker share ``concurrency`` handler slots and one lease keeper (a
    thread that keeps held entries leased whatever the handlers do to the event loop).
    Plain ``def`` handlers run in worker threads, bounded by the same slots. On stop the
    worker stops reading, lets in-flight handlers finish within ``Settings.shutdown_grace``,
    flushes their acks, deregisters its heartbeats and hands everything else back at once.
    Redis going away never stops it: every task backs off and resumes.

    :param agents: an ``Agent`` or a list of them (names must differ).
    :param concurrency: in-flight handlers for the whole process (default from settings).
    :param heartbeat_interval: seconds between heartbeats; a consumer silent for three
        intervals is shown as dead.
    """

    def __init__(
        self,
        bus: Bus,
        agents: Agent | Sequence[Agent],
        *,
        concurrency: int | None = None,
        consumer_name: str | None = None,
        heartbeat_interval: float = 5.0,
    ) -> None:
        self.bus = bus
        self.agents = [agents] if isinstance(agents, Agent) else list(agents)
        if not self.agents:
            raise ConfigurationError("a worker needs at least one agent")
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"agent names must be unique in one worker: {names}")
        for agent in self.agents:
            if not agent.routes:
                raise ConfigurationError(
                    f"agent {agent.name!r} has no handlers: decorate one with @agent.on(TYPE)"
                )
        self.name = consumer_name or new_consumer_name()
        self.slots = Slots(concurrency or bus.settings.concurrency)
        self.keeper = LeaseKeeper(bus)
        self._limiter: anyio.CapacityLimiter | None = None
        self.heartbeat_interval = heartbeat_interval
        self.memories = {a.name: memory_for(bus, a) for a in self.agents}
        self.consumers: list[Consumer] = [
            bus.consumer(
                agent.name,
                {topic: self._handler(agent, route) for topic, route in agent.routes.items()},
                consumer_name=self.name,
                slots=self.slots,
                keeper=self.keeper,
            )
            for agent in self.agents
        ]
        self.started_at = datetime.now(UTC)
        self._stop_requested = False

    def __repr__(self) -> str:
        return f"<Worker {self.name} agents={[a.name for a in self.agents]}>"

    @property
    def processed(self) -> int:
        return sum(c.stats.processed for c in self.consumers)

    @property
    def failed(self) -> int:
        return sum(c.stats.failed for c in self.consumers)

    def stop(self) -> None:
        """Begin a graceful stop (safe to call more than once, and from signal handlers)."""
        self._stop_requested = True
        for consumer in self.consumers:
            consumer.stop()

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until stopped. ``handle_signals``: first SIGINT/SIGTERM stops gracefully,
        a second one cancels at once."""
        self._limiter = anyio.CapacityLimiter(self.slots.limit)
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._watch_signals, tg.cancel_scope)
            await tg.start(self.keeper.run)
            await self._register_profiles()
            async with anyio.create_task_group() as consumers:
                for consumer in self.consumers:
                    await consumers.start(consumer.run)
                tg.start_soon(self._heartbeats)
                log.info("worker_started", worker=self.name,
                         agents=[a.name for a in self.agents], concurrency=self.slots.limit)
                task_status.started()
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await forget(self.bus, [self._heartbeat(c).member for c in self.consumers])
            except Exception as exc:  # it will show as dead, then be forgotten
                log.warning("deregister_failed", worker=self.name, error=describe(exc))
        log.info("worker_stopped", worker=self.name, processed=self.processed, failed=self.failed)

    async def _register_profiles(self) -> None:
        """Publish every agent's pattern features, waiting for Redis if it is away."""
        backoff = Backoff()
        pending = list(self.memories.values())
        while pending and not self._stop_requested:
            try:
                await pending[0].register_profile()
                pending.pop(0)
                backoff.reset()
            except Exception as exc:
                await ride_out(exc, backoff, log, "register", worker=self.name)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signals.SIGINT, signals.SIGTERM) as received:
            async for signum in received:
                if self._stop_requested:
                    log.warning("worker_killed", worker=self.name, signal=signum)
                    scope.cancel()
                    return
                log.info("worker_stopping", worker=self.name, signal=signum,
                         grace=self.bus.settings.shutdown_grace)
                self.stop()

    def _heartbeat(self, consumer: Consumer) -> Heartbeat:
        agent = next(a for a in self.agents if a.name == consumer.agent)
        return Heartbeat(
            agent=agent.name,
            consumer=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=agent.version,
            topics=agent.topics,
            in_flight=consumer.in_flight,
            processed=consumer.stats.processed,
            failed=consumer.stats.failed,
            started_at=self.started_at,
            last_beat=datetime.now(UTC),
            ttl=self.heartbeat_interval * 3,
        )

    def _metrics(self, consumer: Consumer, seconds: float) -> IntervalMetrics:
        durations, failed = consumer.stats.take_interval()
        p50 = p95 = mean = None
        if durations:
            ordered = sorted(durations)
            mean = statistics.fmean(ordered) * 1000
            p50 = ordered[int(0.50 * (len(ordered) - 1))] * 1000
            p95 = ordered[int(0.95 * (len(ordered) - 1))] * 1000
        return IntervalMetrics(
            agent=consumer.agent, consumer=self.name, at=datetime.now(UTC), seconds=seconds,
            handled=len(durations), failed=failed, mean_ms=mean, p50_ms=p50, p95_ms=p95,
        )

    async def _heartbeats(self) -> None:
        last = time.monotonic()
        backoff = Backoff(cap=self.heartbeat_interval)
        while True:
            now = time.monotonic()
            metrics = [self._metrics(c, now - last) for c in self.consumers]
            last = now
            try:
                await beat(self.bus, [self._heartbeat(c) for c in self.consumers],
                           [m for m in metrics if m.handled or m.failed])
                backoff.reset()
            except Exception as exc:
                await ride_out(exc, backoff, log, "heartbeat", worker=self.name)
                continue
            await anyio.sleep(self.heartbeat_interval)

    def _handler(self, agent: Agent, route: Route) -> Handler:
        bus = self.bus
        memory = self.memories[agent.name]

        async def handle(signal: Signal, delivery: Delivery) -> str | None:
            data: Any = signal.data
            if route.data is not None:
                try:
                    data = route.data.model_validate(signal.data)
                except ValidationError as exc:
                    raise InvalidData(
                        f"data does not match {route.data.__name__}: {_describe(exc)}"
                    ) from None
            ctx = Context(bus, agent, signal, delivery, data, memory)
            if route.is_async:
                await route.func(signal, ctx)
            else:  # a plain def: in a worker thread, so it cannot block the event loop
                result = await anyio.to_thread.run_sync(route.func, signal, ctx,
                                                        limiter=self._limiter)
                if inspect.isawaitable(result):
                    await result
            return ctx.decision_id

        # the stall watchdog names the user's handler, not this wrapper
        handle.__qualname__ = getattr(route.func, "__qualname__", handle.__qualname__)
        handle.__module__ = getattr(route.func, "__module__", handle.__module__)
        return handle
