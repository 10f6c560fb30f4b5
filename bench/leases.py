"""Lease renewal cost: round trips per second per worker, idle and under load.

A worker's lease keeper renews every held entry from its own thread every
``claim_idle / 4``, in one pipelined round trip (one LEASE script per topic and 1,000
entries). This measures it on a real worker: idle (nothing held), and under load (every
slot held by a long handler, while trivial signals also flow through).
"""

from __future__ import annotations

import time
import uuid

import anyio

import swarmbus
from swarmbus import Agent, Context, Signal, Worker

from .common import Figure


async def _measure(url: str, claim_idle: float, window: float, load: bool) -> tuple[float, float]:
    namespace = "bl" + uuid.uuid4().hex[:8]
    async with swarmbus.connect(url, namespace=namespace, claim_idle=claim_idle) as bus:
        agent = Agent("risk")

        @agent.on("LONG")
        async def long(signal: Signal, ctx: Context) -> None:
            await anyio.sleep(window * 3)

        @agent.on("QUICK")
        async def quick(signal: Signal, ctx: Context) -> None:
            return None

        worker = Worker(bus, agent, concurrency=64)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            if load:
                await bus.publish_many([Signal(type="LONG", source="b", targets=["risk"])
                                        for _ in range(60)])
            await anyio.sleep(claim_idle / 2)
            before_rt, before_n = worker.keeper.round_trips, worker.keeper.renewed
            started = time.monotonic()
            while time.monotonic() - started < window:
                if load:  # trivial signals keep flowing through the 4 free slots
                    await bus.publish_many([Signal(type="QUICK", source="b", targets=["risk"])
                                            for _ in range(20)])
                await anyio.sleep(0.05)
            elapsed = time.monotonic() - started
            rts = (worker.keeper.round_trips - before_rt) / elapsed
            renewed = (worker.keeper.renewed - before_n) / elapsed
            tg.cancel_scope.cancel()
    return rts, renewed


async def run(url: str, quick: bool, repeats: int) -> list[Figure]:
    figures = []
    for claim_idle in ((2.0,) if quick else (2.0, 8.0)):
        window = claim_idle * (1.5 if quick else 3)
        for load in (False, True):
            label = f"lease renewal, claim_idle={claim_idle:g}s, {'held 60' if load else 'idle'}"
            rts = Figure(f"{label}: round trips", "swarmbus", "RT/s", higher_is_better=False)
            per = Figure(f"{label}: entries renewed", "swarmbus", "entries/s",
                         higher_is_better=False)
            for _ in range(repeats):
                rt, renewed = await _measure(url, claim_idle, window, load)
                rts.values.append(rt)
                per.values.append(renewed)
            figures += [rts, per]
    return figures
