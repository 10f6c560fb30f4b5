"""Anomaly detection: one ANOMALY_DETECTED signal per (agent, metric) episode."""

from __future__ import annotations

import random

import anyio
import pytest

from swarmbus import Agent, Context, Signal, Worker
from swarmbus.bus.consume import Delivery
from swarmbus.coordinator import Coordinator
from swarmbus.coordinator.analytics import Detector, anomalies, observe, report
from tests.support import eventually, running

pytestmark = pytest.mark.anyio


def feed(detector: Detector, samples: list[float], **kw: object) -> int:
    kw = {"agent": "a", "metric": "handler_latency", "threshold": 3.0, "min_history": 10,
          "direction": 1, **kw}
    return len(observe(detector, samples, **kw))  # type: ignore[arg-type]


def test_one_alarm_per_episode_and_none_before_min_history() -> None:
    rng = random.Random(1)
    normal = [10 + rng.uniform(-1, 1) for _ in range(40)]
    d = Detector()
    assert feed(d, [200.0, *normal[:9]]) == 0  # no baseline yet
    assert feed(d, normal[9:20]) == 0
    assert feed(d, [200.0] * 5 + [10.0] + [200.0] * 6) == 1  # one episode, one alarm
    assert feed(d, normal[20:25]) == 0  # back to normal for long enough: episode over
    assert feed(d, [220.0] * 3) == 1  # a new episode
    assert feed(d, normal[25:30]) == 0
    assert feed(d, [1.0] * 5) == 0  # faster is no alarm for latency
    quality = Detector()
    feed(quality, normal[:15], direction=-1)
    assert feed(quality, [1.0] * 5, direction=-1) == 1  # lower quality is


def test_a_lasting_shift_becomes_the_new_normal_without_a_second_alarm() -> None:
    d = Detector()
    feed(d, [10.0, 10.5, 9.5] * 5)
    assert feed(d, [100.0 + i % 3 for i in range(60)]) == 1
    assert not d.episode and 95 < sum(d.history) / len(d.history) < 105


async def test_handler_suddenly_twenty_times_slower_raises_one_alarm_per_episode(
    make_bus,
) -> None:
    bus = await make_bus(concurrency=256)
    delay = 0.01
    agent = Agent("risk-manager")

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        await anyio.sleep(delay)

    alarms: list[Signal] = []

    async def on_alarm(signal: Signal, delivery: Delivery) -> None:
        alarms.append(signal)

    watcher = bus.consumer("ops-watcher", {"ANOMALY_DETECTED": on_alarm})
    worker = Worker(bus, agent, heartbeat_interval=0.05)
    coordinator = Coordinator(bus, analytics_every=0.05, janitor_every=3600, poll=0.05,
                              discover_every=0.1)

    async def produce(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            while True:
                await bus.publish_many(
                    [Signal(type="JOB", source="boss", targets=["risk-manager"])
                     for _ in range(10)])
                await anyio.sleep(0.02)

    async with running(watcher), anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await tg.start(coordinator.run)
        await produce(1.5)  # baseline: ~10 ms
        delay = 0.2  # 20x slower
        await produce(0.8)
        await eventually(lambda: _value(len(alarms) >= 1))
        delay = 0.01  # recovered: the episode ends
        await produce(1.0)
        delay = 0.2  # and again: a second episode
        await produce(0.8)
        await eventually(lambda: _value(len(alarms) >= 2))
        await produce(0.3)
        worker.stop()
        coordinator.stop()
    latency = [a for a in alarms if a.data["metric"] == "handler_latency"]
    assert len(latency) == 2
    assert all(a.data["agent"] == "risk-manager" and a.data["z"] > 3 for a in latency)
    assert latency[0].data["value"] > 1.75 * latency[0].data["mean"]  # fired on the rise
    recorded = await anomalies(bus)
    assert [(a.agent, a.metric) for a in recorded] == [("risk-manager", "handler_latency")] * 2
    rows = await report(bus, ["risk-manager"], window=60)
    assert rows[0].handled > 100 and rows[0].handler_p50_ms is not None


async def _value(value: object) -> object:
    return value
