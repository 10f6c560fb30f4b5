"""Leases renewed from a thread, and a watchdog for a stalled event loop.

A consumer must keep the entries it holds from looking idle, or a live consumer's work
is reclaimed by another one and runs twice. Renewing from the event loop fails exactly
when it matters: a handler that blocks the loop (a synchronous SDK call, ``time.sleep``,
CPU work) also blocks the renewals. So, like Kafka clients that heartbeat from a
background thread, a ``LeaseKeeper`` renews every held entry from a thread of its own,
over a connection of its own, every ``claim_idle / 4``. It needs the GIL only briefly,
which CPython hands over every few milliseconds even to a busy thread. A process that
is gone stops renewing, and its entries become reclaimable within ``claim_idle``.

The same thread watches the event loop: the loop bumps a timestamp ten times a second,
and when it falls more than ``stall_after`` seconds behind, the keeper logs which handler
(agent, topic, signal) the loop is stuck in and where in the code. The loop is asked
nothing: reading another thread's current task and frame is what debuggers do.

Cost: one pipelined round trip per renewal interval while anything is held (LEASE
scripts, at most 1,000 entries each), none while idle.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus
from redis.exceptions import NoScriptError

from . import scripts
from .backoff import Backoff
from .faults import describe, is_transient, type_name

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["LeaseKeeper", "Running"]

log = structlog.get_logger(__name__)

_LEASE_CHUNK = 1000
_TICK = 0.1

#: (stream key, group, consumer)
Owner = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Running:
    """What a handler task is running, for the stall watchdog's report."""

    agent: str
    topic: str
    signal_id: str
    handler: str


class LeaseKeeper:
    """Renews the leases of every consumer of one process; shared by a worker's consumers.

    Consumers call ``hold``/``drop`` as entries come and go (thread-safe), and read back
    entries they no longer own with ``take_lost``. ``run()`` (in the process's task group)
    starts the thread and keeps the loop's heartbeat; the thread stops when it returns.

    :param interval: seconds between renewals (default ``claim_idle / 4``).
    :param stall_after: seconds the event loop may stall before a warning is logged.
    """

    def __init__(
        self, bus: Bus, *, interval: float | None = None, stall_after: float = 1.0
    ) -> None:
        self.bus = bus
        claim_idle = bus.settings.claim_idle
        self.interval = interval if interval is not None else max(claim_idle / 4, 0.01)
        self.stall_after = stall_after
        self._lock = threading.Lock()
        self._held: dict[Owner, set[str]] = {}
        self._lost: dict[Owner, list[str]] = {}
        self._running: dict[Any, Running] = {}
        self._tick = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._users = 0
        #: Renewal round trips, entries renewed, failed renewals, stalls seen.
        self.round_trips = 0
        self.renewed = 0
        self.failures = 0
        self.stalls = 0

    # -- called from the event loop (thread-safe) ------------------------------------------

    def hold(self, owner: Owner, entry_ids: Iterable[str]) -> None:
        with self._lock:
            self._held.setdefault(owner, set()).update(entry_ids)

    def drop(self, owner: Owner, entry_ids: Iterable[str]) -> None:
        with self._lock:
            held = self._held.get(owner)
            if held is not None:
                held.difference_update(entry_ids)

    def take_lost(self, owner: Owner) -> list[str]:
        """Entries a renewal found owned by another consumer since the last call."""
        with self._lock:
            return self._lost.pop(owner, [])

    def held(self, owner: Owner) -> int:
        with self._lock:
            return len(self._held.get(owner, ()))

    def running(self, task: Any, what: Running) -> None:
        self._running[task] = what

    def finished(self, task: Any) -> None:
        self._running.pop(task, None)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the thread, then bump the loop's heartbeat until cancelled.

        Several consumers may share one keeper: each calls ``run``; the first starts the
        thread and the last one out stops it.
        """
        self._users += 1
        if self._thread is None or not self._thread.is_alive():
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._stop.clear()
            self._tick = time.monotonic()
            self._thread = threading.Thread(target=self._main, name="swarmbus-leases",
                                            daemon=True)
            self._thread.start()
        task_status.started()
        try:
            while True:
                self._tick = time.monotonic()
                await anyio.sleep(_TICK)
        finally:
            self._users -= 1
            if self._users == 0:
                self._stop.set()
                thread = self._thread
                if thread is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await anyio.to_thread.run_sync(thread.join, 5.0)

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        """The thread: renew when due, watch the loop in between. Never ends on an error."""
        client: Any = None
        backoff = Backoff(base=min(self.interval, 0.1), cap=self.interval)
        next_lease = time.monotonic()
        stalled: float | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    stalled = self._watch(now, stalled)
                except Exception as exc:  # reporting must never stop the renewals
                    log.error("stall_watch_failed", error=describe(exc), exc_info=exc)
                if now >= next_lease:
                    try:
                        if client is None:
                            client = self.bus.sync_client(socket_timeout=self._timeout)
                        self._renew(client)
                        backoff.reset()
                        next_lease = now + self.interval
                    except Exception as exc:
                        self.failures += 1
                        next_lease = time.monotonic() + backoff.next()
                        if self.failures == 1 or self.failures % 20 == 0:
                            event = log.warning if is_transient(exc) else log.error
                            event("lease_renewal_failed", error=describe(exc),
                                  error_type=type_name(exc), failures=self.failures)
                        client = self._close(client)  # a fresh connection next time
                self._stop.wait(max(min(_TICK, next_lease - time.monotonic()), 0.001))
        finally:
            self._close(client)

    @property
    def _timeout(self) -> float:
        return min(max(self.interval * 2, 1.0), 10.0)

    @staticmethod
    def _close(client: Any) -> None:
        """Close a connection (a frozen server leaves a dead socket behind)."""
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _renew(self, client: Any) -> None:
        with self._lock:
            snapshot = [(owner, sorted(ids)) for owner, ids in self._held.items() if ids]
        if not snapshot:
            return
        calls: list[tuple[Owner, list[str]]] = []
        for owner, ids in snapshot:
            for start in range(0, len(ids), _LEASE_CHUNK):
                calls.append((owner, ids[start : start + _LEASE_CHUNK]))
        results = self._send(client, calls)
        self.round_trips += 1
        lost: dict[Owner, list[str]] = {}
        for (owner, ids), result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                raise result
            self.renewed += len(ids) - len(result)
            if result:
                lost.setdefault(owner, []).extend(
                    r.decode() if isinstance(r, bytes) else str(r) for r in result
                )
        if lost:  # stop renewing them: they are another consumer's now
            with self._lock:
                for owner, ids in lost.items():
                    held = self._held.get(owner)
                    if held is not None:
                        held.difference_update(ids)
                    self._lost.setdefault(owner, []).extend(ids)

    @staticmethod
    def _send(client: Any, calls: list[tuple[Owner, list[str]]]) -> list[Any]:
        def pipeline() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for (stream, group, consumer), ids in calls:
                pipe.evalsha(scripts.LEASE.sha, 1, stream, group, consumer, *ids)
            return list(pipe.execute(raise_on_error=False))

        results = pipeline()
        if any(isinstance(r, NoScriptError) for r in results):
            client.script_load(scripts.LEASE.source)
            results = pipeline()
        return results

    def _watch(self, now: float, stalled: float | None) -> float | None:
        """Report a stalled event loop once per stall, and its end."""
        lag = now - self._tick
        if stalled is None and lag > self.stall_after:
            self.stalls += 1
            running, where = self._culprit()
            log.warning("event_loop_stalled", stalled_for=round(lag, 2),
                        handler=running.handler if running else None,
                        agent=running.agent if running else None,
                        topic=running.topic if running else None,
                        signal_id=running.signal_id if running else None, where=where,
                        hint="a handler is blocking the event loop: make it a plain 'def' "
                             "(it then runs in a thread) or await instead of blocking")
            return self._tick
        if stalled is not None and self._tick != stalled:
            log.info("event_loop_recovered", stalled_for=round(self._tick - stalled, 2))
            return None
        return stalled

    def _culprit(self) -> tuple[Running | None, str | None]:
        """The handler the loop thread is running, and the line it is blocked on."""
        running = None
        if self._loop is not None:
            try:
                task = asyncio.current_task(self._loop)
            except Exception:
                task = None
            if task is not None:
                running = self._running.get(task)
        where = None
        frame = sys._current_frames().get(self._loop_thread or -1)
        if frame is not None:
            code = frame.f_code
            where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        return running, where
