"""Memory workloads: stats(24 h) over many decisions, top-10 patterns over many patterns."""

from __future__ import annotations

import statistics
import time
import uuid

import anyio
import orjson

import swarmbus
from swarmbus.bus import scripts
from swarmbus.coordinator.consolidation import _fold_call

from .common import Figure

TYPES = ["RISK_ASSESSMENT", "TRADE_EXECUTION", "STRATEGY_SELECTION"]


async def _fill_decisions(bus: swarmbus.Bus, agent: str, n: int) -> None:
    memory = bus.memory(agent)
    sem = anyio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            handle = await memory.decide(TYPES[i % 3], reasoning={"confidence": (i % 10) / 10})
            await handle.outcome(success=i % 3 != 0, quality_score=(i % 7) / 7,
                                 latency_ms=1 + i % 50)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)


async def _fill_patterns(bus: swarmbus.Bus, agent: str, n: int) -> None:
    now = int(time.time() * 1000)
    calls = []
    for i in range(n):
        record = {"decision_type": TYPES[i % 3], "conditions": {"market.trend": f"t{i % 97}"},
                  "reasoning": {"selected": [f"choice-{i}"]}}
        fields = {b"k": b"o", b"r": orjson.dumps(record),
                  b"o": orjson.dumps({"success": i % 4 != 0, "quality_score": 0.5})}
        call = _fold_call(bus, agent, f"{now}-{i}", fields)
        assert call is not None
        calls.append(call)
    for start in range(0, n, 1000):
        await scripts.run_many(bus.redis, calls[start : start + 1000])


async def _latencies(fn, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98]


async def run(url: str, quick: bool, repeats: int) -> list[Figure]:
    n_decisions = 20_000 if quick else 100_000
    n_patterns = 10_000
    async with swarmbus.connect(url, namespace="bm" + uuid.uuid4().hex[:8]) as bus:
        start = time.perf_counter()
        await _fill_decisions(bus, "bench-agent", n_decisions)
        fill_rate = n_decisions / (time.perf_counter() - start)
        await _fill_patterns(bus, "bench-agent", n_patterns)
        memory = bus.memory("bench-agent")
        stats = await memory.stats(window=86_400)
        assert stats.count == n_decisions, stats
        assert len(await memory.patterns(limit=10)) == 10
        figures = [
            Figure(f"stats(24h) over {n_decisions:,} decisions p50", "swarmbus", "ms",
                   higher_is_better=False),
            Figure(f"stats(24h) over {n_decisions:,} decisions p99", "swarmbus", "ms",
                   higher_is_better=False),
            Figure(f"patterns(limit=10) over {n_patterns:,} p50", "swarmbus", "ms",
                   higher_is_better=False),
            Figure(f"patterns(limit=10) over {n_patterns:,} p99", "swarmbus", "ms",
                   higher_is_better=False),
            Figure("decide+outcome (64 concurrent)", "swarmbus", "decisions/s"),
        ]
        for _ in range(repeats):
            p50, p99 = await _latencies(lambda: memory.stats(window=86_400), 300)
            figures[0].values.append(p50)
            figures[1].values.append(p99)
            p50, p99 = await _latencies(lambda: memory.patterns(limit=10), 300)
            figures[2].values.append(p50)
            figures[3].values.append(p99)
        figures[4].values.append(fill_rate)
    return figures
