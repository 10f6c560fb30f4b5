"""Consolidation: STM events per second through one coordinator."""

from __future__ import annotations

import time
import uuid

import anyio

import swarmbus
from swarmbus.coordinator import Coordinator
from swarmbus.coordinator.consolidation import GROUP

from .common import Figure
from .memory import _fill_decisions


async def _drained(bus: swarmbus.Bus, agents: list[str]) -> bool:
    for agent in agents:
        groups = await bus.redis.xinfo_groups(bus.keys.memory(agent).stm)
        g = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if g is None or g["lag"] or g["pending"]:
            return False
    return True


async def consolidation(url: str, decisions: int) -> float:
    agents = ["agent-a", "agent-b", "agent-c"]
    async with swarmbus.connect(url, namespace="bc" + uuid.uuid4().hex[:8]) as bus:
        for agent in agents:
            await bus.redis.set(bus.keys.memory(agent).profile,
                                b'{"features": ["market.trend"]}')
            await _fill_decisions(bus, agent, decisions // len(agents))
        events = 2 * (decisions // len(agents)) * len(agents)
        coordinator = Coordinator(bus, poll=0.001, janitor_every=3600, analytics_every=3600,
                                  checkpoint_every=3600)
        async with anyio.create_task_group() as tg:
            start = time.perf_counter()
            await tg.start(coordinator.run)
            while not await _drained(bus, agents):
                await anyio.sleep(0.005)
            elapsed = time.perf_counter() - start
            coordinator.stop()
        return events / elapsed


async def run(url: str, quick: bool, repeats: int) -> list[Figure]:
    n = 6_000 if quick else 30_000
    figure = Figure("consolidation (1 coordinator)", "swarmbus", "STM events/s")
    for _ in range(repeats):
        figure.values.append(await consolidation(url, n))
    return [figure]
