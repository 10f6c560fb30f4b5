"""``swarmbus demo``: the reference trading fleet and a coordinator, live, in one process.

Runs ``examples/trading.py`` (market feed, three agents) and a ``Coordinator`` on the
embedded backend, or on a real Redis with ``--redis``, shows a live view, then prints a
summary with what the fleet decided and the patterns it learned.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections import Counter, deque
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .agents.worker import Worker
from .bus.connection import Bus, connect
from .bus.signal import Signal
from .coordinator.consolidation import consolidate
from .coordinator.service import Coordinator
from .errors import ConfigurationError
from .logging import configure_logging
from .settings import Settings

__all__ = ["load_fleet", "main"]

SEVERITY_STYLE = {"low": "dim", "medium": "cyan", "high": "yellow", "critical": "bold red"}


def load_fleet() -> ModuleType:
    """The reference fleet module, from the ``examples/`` folder beside the package."""
    path = Path(__file__).resolve().parents[1] / "examples" / "trading.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location("examples.trading", path)
        assert spec is not None and spec.loader is not None
        module = sys.modules.get("examples.trading")
        if module is None or getattr(module, "__file__", None) != str(path):
            module = importlib.util.module_from_spec(spec)
            sys.modules["examples.trading"] = module
            spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module("examples.trading")
    except ModuleNotFoundError:
        raise ConfigurationError(
            "the demo needs examples/trading.py: run it from a swarmbus checkout"
        ) from None


class _View:
    """What the live view and the summary show, fed by a tail of every topic."""

    def __init__(self, worker: Worker, seconds: float) -> None:
        self.worker = worker
        self.seconds = seconds
        self.started = time.monotonic()
        self.by_type: Counter[str] = Counter()
        self.recent: deque[Signal] = deque(maxlen=8)
        self.times: deque[float] = deque(maxlen=5000)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def seen(self, signal: Signal) -> None:
        self.by_type[signal.type] += 1
        self.recent.append(signal)
        self.times.append(time.monotonic())

    def rate(self) -> float:
        now = time.monotonic()
        return sum(1 for t in self.times if now - t <= 1.0) / 1.0

    def agents(self) -> Table:
        table = Table(title="agents", expand=False)
        for col in ("agent", "processed", "failed", "retried", "in flight", "p50 ms", "p95 ms"):
            table.add_column(col, justify="left" if col == "agent" else "right")
        for consumer in self.worker.consumers:
            s = consumer.stats
            p50, p95 = _percentiles(list(s.handler_seconds))
            table.add_row(consumer.agent, str(s.processed), str(s.failed), str(s.retried),
                          str(consumer.in_flight), p50, p95)
        return table

    def render(self) -> Group:
        head = Text.assemble(
            ("swarmbus demo ", "bold"),
            f"{self.elapsed:5.1f}/{self.seconds:.0f} s   ",
            (f"{self.rate():6.1f} signals/s", "green"),
            f"   {sum(self.by_type.values())} signals",
        )
        last = Table(title="last signals", expand=False)
        for col in ("type", "route", "severity", "data"):
            last.add_column(col)
        for s in list(self.recent)[::-1]:
            last.add_row(Text(s.type, style=SEVERITY_STYLE[s.severity.value]),
                         f"{s.source} -> {','.join(s.targets) or '*'}", s.severity.value,
                         Text(_short(s.data)))
        return Group(head, self.agents(), last)

    def line(self) -> str:
        agents = ", ".join(f"{c.agent} {c.stats.processed} ok/{c.stats.failed} failed"
                           for c in self.worker.consumers)
        return (f"demo {self.elapsed:4.1f}/{self.seconds:.0f}s: "
                f"{sum(self.by_type.values())} signals, {self.rate():.1f}/s; {agents}")


def _percentiles(samples: list[float]) -> tuple[str, str]:
    if len(samples) < 2:
        return "-", "-"
    q = statistics.quantiles(samples, n=20)
    return f"{q[9] * 1000:.2f}", f"{q[18] * 1000:.2f}"


def _short(data: dict[str, Any], width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in data.items() if k != "next_move")
    return text if len(text) <= width else text[: width - 1] + "…"


async def _watch(bus: Bus, view: _View) -> None:
    async for signal in bus.tail(follow=True):
        view.seen(signal)




async def run_demo(bus: Bus, seconds: float, console: Console) -> _View:
    """Run fleet + feed for ``seconds`` (or until Ctrl-C) with a live view."""
    trading = load_fleet()
    worker = Worker(bus, trading.fleet, heartbeat_interval=1.0)
    coordinator = Coordinator(bus, name="demo-coordinator", poll=0.1, discover_every=0.5,
                              checkpoint_every=5, janitor_every=30, analytics_every=1)
    view = _View(worker, seconds)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch, bus, view)
        await tg.start(coordinator.run)
        async with anyio.create_task_group() as running:
            await running.start(worker.run)
            async with anyio.create_task_group() as feeding:
                feeding.start_soon(trading.feed, bus)
                with anyio.move_on_after(seconds):
                    await _show(view, console)
                feeding.cancel_scope.cancel()
            worker.stop()  # graceful: in-flight handlers finish, worker.run returns
        tg.cancel_scope.cancel()
    for agent in trading.fleet:  # fold what arrived after the coordinator's last pass
        while await consolidate(bus, agent.name, coordinator.name):
            pass
    return view


async def _show(view: _View, console: Console) -> None:
    async def interrupted() -> None:
        import signal as signals

        with anyio.open_signal_receiver(signals.SIGINT) as received:
            async for _ in received:
                return

    async with anyio.create_task_group() as tg:

        async def until_interrupted() -> None:
            await interrupted()
            tg.cancel_scope.cancel()

        tg.start_soon(until_interrupted)
        if console.is_terminal:
            with Live(view.render(), console=console, refresh_per_second=4) as live:
                while True:
                    await anyio.sleep(0.25)
                    live.update(view.render())
        else:
            while True:  # no terminal: one progress line a second
                await anyio.sleep(1.0)
                console.print(view.line(), highlight=False)


async def memory_tables(bus: Bus, agents: list[str]) -> tuple[Table, Table]:
    decisions = Table(title="decisions (last 24 h)")
    for col in ("agent", "decisions", "outcomes", "success", "mean quality"):
        decisions.add_column(col, justify="left" if col == "agent" else "right")
    learned = Table(title="patterns learned (best first)")
    for col in ("agent", "confidence", "status", "pattern"):
        learned.add_column(col, justify="right" if col == "confidence" else "left")
    for agent in agents:
        memory = bus.memory(agent)
        stats = await memory.stats()
        if stats.count:
            decisions.add_row(
                agent, str(stats.count), str(stats.outcomes),
                "-" if stats.success_rate is None else f"{stats.success_rate:.0%}",
                "-" if stats.mean_quality is None else f"{stats.mean_quality:.2f}")
        for p in await memory.patterns(limit=4):
            learned.add_row(agent, f"{p.confidence:.2f}", p.status, Text(p.description))
    return decisions, learned


def summary(
    view: _View, dead: dict[str, int], tables: tuple[Table, Table], console: Console
) -> None:
    elapsed = view.elapsed
    total = sum(view.by_type.values())
    console.print()
    console.print(f"[bold]swarmbus demo summary[/bold]  {elapsed:.1f} s, {total} signals "
                  f"({total / elapsed if elapsed else 0:.1f}/s)")
    topics = Table(title="signals by type")
    topics.add_column("type")
    topics.add_column("signals", justify="right")
    topics.add_column("dead letters", justify="right")
    for topic, count in sorted(view.by_type.items()):
        topics.add_row(topic, str(count), str(dead.get(topic, 0)))
    console.print(topics)
    console.print(view.agents())
    for table in tables:
        console.print(table)


async def _main(settings: Settings, seconds: float, use_redis: bool) -> int:
    url = settings.redis_url if use_redis else "memory://swarmbus-demo"
    console = Console()
    async with connect(url, settings=settings, retry_backoff=0.05) as bus:
        where = settings.masked_url if use_redis else "the embedded backend (memory://)"
        console.print(f"running the reference trading fleet on {where} "
                      f"for {seconds:.0f} s (Ctrl-C to stop early)", highlight=False)
        view = await run_demo(bus, seconds, console)
        dead = {t: len(await bus.dead_letters(t, limit=10_000)) for t in view.by_type}
        tables = await memory_tables(bus, [c.agent for c in view.worker.consumers])
    summary(view, dead, tables, console)
    return 0


def main(settings: Settings, *, seconds: float, use_redis: bool) -> int:
    """Entry point of ``swarmbus demo``; returns the exit code.

    Logs below ``error`` would scroll the live view away, so the demo shows only errors
    unless a log level other than the default was asked for.
    """
    if settings.log_level == "info":
        configure_logging(settings.log_format, "error")
    return anyio.run(_main, settings, seconds, use_redis)
