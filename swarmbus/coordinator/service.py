"""``Coordinator``: consolidation on every replica, periodic jobs on one at a time."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import anyio
import structlog
from anyio.abc import TaskStatus

from ..agents.state import StateStore
from ..bus.backoff import Backoff
from ..bus.connection import Bus
from ..bus.faults import describe, ride_out
from . import analytics, janitor
from .consolidation import consolidate, ensure_group, reclaim
from .lease import Lease
from .registry import discover_agents

__all__ = ["Coordinator"]

log = structlog.get_logger(__name__)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Coordinator:
    """Turns what agents did into what the fleet knows, and keeps Redis clean.

    Every replica consolidates (the STM consumer group shares the work, and folding is
    exactly-once). The periodic jobs (state checkpoints, janitor, analytics) run on the
    replica holding the lease.

    :param name: consumer name; stable across restarts so a restarted coordinator
        re-reads the events it had taken but not folded (default ``coordinator:HOST``).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        name: str | None = None,
        batch: int = 500,
        poll: float = 0.2,
        discover_every: float = 5.0,
        checkpoint_every: float | timedelta = 300.0,
        janitor_every: float | timedelta = 60.0,
        analytics_every: float | timedelta = 5.0,
        reclaim_idle: float | timedelta = 30.0,
        dlq_retention: float | timedelta = 7 * 86_400.0,
        dead_consumer_after: float | timedelta = 3_600.0,
        anomaly_threshold: float = 3.0,
        anomaly_min_history: int = 10,
        lease_ttl: float = 15.0,
    ) -> None:
        self.bus = bus
        self.name = name or f"coordinator:{socket.gethostname()}"
        self.batch = batch
        self.poll = poll
        self.discover_every = discover_every
        self.every = {
            "checkpoints": _seconds(checkpoint_every),
            "janitor": _seconds(janitor_every),
            "analytics": _seconds(analytics_every),
        }
        self.reclaim_idle = _seconds(reclaim_idle)
        self.dlq_retention = _seconds(dlq_retention)
        self.dead_consumer_after = _seconds(dead_consumer_after)
        self.anomaly_threshold = anomaly_threshold
        self.anomaly_min_history = anomaly_min_history
        self.lease = Lease(bus, self.name, ttl=lease_ttl)
        self.agents: list[str] = []
        self.folded = 0
        self._due = dict.fromkeys(self.every, 0.0)
        self._stopping = False

    def __repr__(self) -> str:
        return f"<Coordinator {self.name}>"

    def stop(self) -> None:
        self._stopping = True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()`` or cancellation (waiting for Redis if it is away)."""
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._discover()
                break
            except Exception as exc:
                await ride_out(exc, backoff, log, "coordinator_start", coordinator=self.name)
        task_status.started()
        log.info("coordinator_started", coordinator=self.name, agents=self.agents)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._jobs)
                await self._consolidation()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await self.lease.release()
                except Exception as exc:  # it expires by itself within lease_ttl
                    log.warning("lease_release_failed", coordinator=self.name,
                                error=describe(exc))
            log.info("coordinator_stopped", coordinator=self.name, folded=self.folded)

    async def _discover(self) -> None:
        found = await discover_agents(self.bus)
        for agent in found:
            if agent not in self.agents:
                await ensure_group(self.bus, agent)
                # events this replica took before a restart come first
                while n := await consolidate(self.bus, agent, self.name, count=self.batch,
                                             pending=True):
                    self.folded += n
        self.agents = found

    async def _consolidation(self) -> None:
        next_discovery = time.monotonic() + self.discover_every
        next_reclaim = time.monotonic() + self.reclaim_idle / 2
        backoff = Backoff()
        while not self._stopping:
            try:
                if time.monotonic() >= next_discovery:
                    await self._discover()
                    next_discovery = time.monotonic() + self.discover_every
                handled = await consolidate(
                    self.bus, self.agents, self.name, count=self.batch,
                    block=None if self.bus.embedded else self.poll,
                )
                if time.monotonic() >= next_reclaim:
                    for agent in self.agents:
                        handled += await reclaim(self.bus, agent, self.name,
                                                 min_idle=self.reclaim_idle, count=self.batch)
                    next_reclaim = time.monotonic() + self.reclaim_idle / 2
                self.folded += handled
                backoff.reset()
                if not handled and (self.bus.embedded or not self.agents):
                    await anyio.sleep(self.poll)  # nothing to block on
            except Exception as exc:
                if "NOGROUP" in describe(exc):
                    log.error("coordinator_group_recreated", error=describe(exc))
                    self.agents = []  # rediscovery recreates the groups
                    next_discovery = 0.0
                await ride_out(exc, backoff, log, "consolidation", coordinator=self.name)

    async def _jobs(self) -> None:
        backoff = Backoff()
        while True:
            try:
                token = await self.lease.acquire()
                if token is not None:
                    await self.run_due_jobs(token)
                backoff.reset()
            except Exception as exc:
                await ride_out(exc, backoff, log, "coordinator_jobs", coordinator=self.name)
                continue
            await anyio.sleep(min(1.0, self.lease.ttl / 3))

    async def run_due_jobs(self, token: int, *, force: bool = False) -> None:
        """Run every periodic job whose interval elapsed (all of them with ``force``)."""
        now = time.monotonic()
        for job, every in self.every.items():
            if force or now >= self._due[job]:
                self._due[job] = now + every
                await getattr(self, f"_{job}")(token)

    async def _checkpoints(self, token: int) -> None:
        made = 0
        for agent in self.agents:
            if await StateStore(self.bus, agent).checkpoint("auto", only_if_changed=True):
                made += 1
        if made:
            log.info("checkpoints_taken", count=made)

    async def _janitor(self, token: int) -> None:
        report = await janitor.sweep(self.bus, token, self.agents,
                                     dlq_retention=self.dlq_retention,
                                     dead_consumer_after=self.dead_consumer_after)
        log.info("janitor_swept", **vars(report))

    async def _analytics(self, token: int) -> None:
        for anomaly in await analytics.tick(self.bus, self.agents,
                                            threshold=self.anomaly_threshold,
                                            min_history=self.anomaly_min_history):
            log.warning("anomaly_detected", **anomaly.model_dump(mode="json"))
