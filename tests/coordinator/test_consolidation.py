"""Consolidation survives SIGKILL at random points and competing replicas: the patterns
always equal a from-scratch recomputation over the decision records."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

import swarmbus
from swarmbus.agents.patterns import pattern_id, wilson_lower_bound
from swarmbus.coordinator import Coordinator
from swarmbus.coordinator.consolidation import GROUP
from swarmbus.testing import RedisProcess
from tests.support import eventually

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
AGENTS = ["market-hunter", "risk-manager", "trade-executor"]


async def seed_workload(bus: swarmbus.Bus, n: int, seed: int = 11) -> None:
    """``n`` decisions with outcomes across three agents, over a few conditions/choices."""
    rng = random.Random(seed)
    plan = []
    for _ in range(n):
        agent = rng.choice(AGENTS)
        trend = rng.choice(["bullish", "bearish", "sideways"])
        choice = rng.choice(["hedge", "follow", "reduce"])
        ok = rng.random() < {"hedge": 0.5, "follow": 0.7, "reduce": 0.3}[choice]
        quality = rng.choice([None, round(rng.random(), 3)])
        plan.append((agent, trend, choice, ok, quality))
    for agent in AGENTS:
        await bus.redis.set(bus.keys.memory(agent).profile, b'{"features": ["market.trend"]}')
    limiter = anyio.Semaphore(64)

    async def one(agent: str, trend: str, choice: str, ok: bool, quality: float | None) -> None:
        async with limiter:
            handle = await bus.memory(agent).decide(
                "STRATEGY_SELECTION", context={"market": {"trend": trend}},
                reasoning={"selected": [choice]})
            await handle.outcome(success=ok, quality_score=quality)

    async with anyio.create_task_group() as tg:
        for item in plan:
            tg.start_soon(one, *item)


async def recomputed(bus: swarmbus.Bus) -> dict[str, tuple[int, int, int, float]]:
    """Pattern statistics from scratch, from the decision records."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for agent in AGENTS:
        for d in await bus.memory(agent).decisions(limit=1_000_000):
            assert d.outcome is not None
            pid = f"{agent}/{pattern_id(d.decision_type, d.conditions, d.reasoning.selected)}"
            row = out[pid]
            row[0] += 1
            row[1] += d.outcome.success
            if d.outcome.quality_score is not None:
                row[2] += 1
                row[3] += d.outcome.quality_score
    return {k: (int(v[0]), int(v[1]), int(v[2]), v[3]) for k, v in out.items()}


async def learned(bus: swarmbus.Bus) -> dict[str, tuple[int, int, int, float]]:
    out = {}
    for agent in AGENTS:
        for p in await bus.memory(agent).patterns(limit=1000):
            raw = await bus.redis.hgetall(bus.keys.memory(agent).pattern(p.id))
            out[f"{agent}/{p.id}"] = (p.sample_size, p.successes, int(raw.get(b"qn", 0)),
                                      float(raw.get(b"qs", 0)))
            assert p.confidence == pytest.approx(wilson_lower_bound(p.successes, p.sample_size))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (n, s, qn, qs) in want.items():
        assert got[key][:3] == (n, s, qn), key
        assert got[key][3] == pytest.approx(qs), key


async def all_folded(bus: swarmbus.Bus) -> bool:
    for agent in AGENTS:
        groups = await bus.redis.xinfo_groups(bus.keys.memory(agent).stm)
        group = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if group is None or group["lag"] != 0 or group["pending"] != 0:
            return False
    return True


class Proc:
    def __init__(self, url: str, namespace: str, name: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.coordinator.coordinator_proc", url, namespace, name],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.popen.stdout is not None
        assert self.popen.stdout.readline().startswith("ready")

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(10)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


async def test_consolidation_in_process_matches_recomputation(make_bus) -> None:
    bus = await make_bus()
    await seed_workload(bus, 600)
    coordinator = Coordinator(bus, poll=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(coordinator.run)
        await eventually(lambda: all_folded(bus), timeout=30)
        coordinator.stop()
    assert coordinator.folded == 1200  # 600 decision events + 600 outcome events
    assert_same(await learned(bus), await recomputed(bus))


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
async def test_sigkill_at_random_points_never_double_counts(
    redis_server: RedisProcess, namespace: str, replicas: int
) -> None:
    rng = random.Random(replicas)
    async with swarmbus.connect(redis_server.url, namespace=namespace) as bus:
        await seed_workload(bus, 20_000)
        procs = [Proc(redis_server.url, namespace, f"coord-{i}") for i in range(replicas)]
        mid_run = 0
        try:
            for _ in range(10):
                await anyio.sleep(rng.uniform(0.05, 0.4))
                victim = rng.randrange(replicas)
                mid_run += not await all_folded(bus)
                procs[victim].kill()  # SIGKILL mid-consolidation
                procs[victim] = Proc(redis_server.url, namespace, f"coord-{victim}")
            await eventually(lambda: all_folded(bus), timeout=120, interval=0.1)
        finally:
            for p in procs:
                p.kill()
        assert mid_run >= 5, f"only {mid_run} kills landed while consolidating"
        want = await recomputed(bus)
        assert sum(v[0] for v in want.values()) == 20_000
        assert_same(await learned(bus), want)
