"""Agents and workers: typed handlers, context, effectively-once publishing, heartbeats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from pydantic import BaseModel

import swarmbus
from swarmbus import Agent, Context, Retry, Signal, StatusState, Worker
from swarmbus.agents import heartbeats
from swarmbus.agents.registry import Heartbeat, beat
from tests.support import eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


class Whale(BaseModel):
    volume: float
    venue: str


async def test_typed_data_reaches_the_handler_and_bad_data_is_dead_lettered(make_bus) -> None:
    bus = await make_bus()
    risk = Agent("risk-manager", version="2.1.0")
    got: list[Whale] = []

    @risk.on("WHALE_ACTIVITY", data=Whale)
    async def assess(signal: Signal, ctx: Context) -> None:
        got.append(ctx.data)

    async with serving(Worker(bus, risk)):
        good = await bus.publish(Signal(type="WHALE_ACTIVITY", source="hunter",
                                        targets=["risk-manager"],
                                        data={"volume": 12.5, "venue": "x"}))
        bad = await bus.publish(Signal(type="WHALE_ACTIVITY", source="hunter",
                                       targets=["risk-manager"], data={"volume": "lots"}))
        ok = await bus.wait(good, timeout=10)
        failed = await bus.wait(bad, timeout=10)
    assert got == [Whale(volume=12.5, venue="x")]
    assert ok.targets["risk-manager"].state is StatusState.processed
    target = failed.targets["risk-manager"]
    assert target.state is StatusState.failed and target.attempts == 1
    assert "data does not match Whale" in (target.error or "")
    (letter,) = await bus.dead_letters("WHALE_ACTIVITY")
    assert letter.error_type == "InvalidData"
    assert "volume" in letter.error and "venue" in letter.error


async def test_published_signals_carry_lineage_and_are_not_duplicated_on_rerun(make_bus) -> None:
    bus = await make_bus(retry_backoff=0.01)
    risk = Agent("risk-manager")
    executor = Agent("trade-executor")
    runs: list[int] = []
    alerts: list[Signal] = []

    @risk.on("WHALE_ACTIVITY")
    async def assess(signal: Signal, ctx: Context) -> None:
        runs.append(ctx.attempt)
        await ctx.publish("RISK_ALERT", targets=["trade-executor"], data={"level": "high"})
        await ctx.publish("RISK_ALERT", targets=["trade-executor"], data={"level": "low"})
        if ctx.attempt == 1:
            raise RuntimeError("crashed after publishing")  # the re-run publishes again

    @executor.on("RISK_ALERT")
    async def act(signal: Signal, ctx: Context) -> None:
        alerts.append(signal)

    async with serving(Worker(bus, [risk, executor])):
        origin = Signal(type="WHALE_ACTIVITY", source="hunter", targets=["risk-manager"],
                        correlation_id="conv-1")
        await bus.publish(origin)
        await bus.wait(origin.id, timeout=10)
        await eventually(lambda: _value(len(alerts) == 2))
        await anyio.sleep(0.2)  # a duplicate, if there were one, would arrive now
    assert runs == [1, 2]
    assert sorted(a.data["level"] for a in alerts) == ["high", "low"]
    assert await bus.redis.xlen(bus.keys.topic("RISK_ALERT").stream) == 2
    for alert in alerts:
        assert alert.source == "risk-manager"
        assert alert.causation_id == origin.id
        assert alert.correlation_id == "conv-1"


async def test_several_agents_share_one_workers_concurrency(make_bus) -> None:
    bus = await make_bus()
    running = 0
    peak = 0
    a, b = Agent("agent-a"), Agent("agent-b")

    async def slow(signal: Signal, ctx: Context) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1

    a.on("JOB")(slow)
    b.on("JOB")(slow)
    async with serving(Worker(bus, [a, b], concurrency=3)):
        ids = await bus.publish_many(
            [Signal(type="JOB", source="boss", targets=["agent-a", "agent-b"]) for _ in range(12)]
        )
        for signal_id in ids:
            status = await bus.wait(signal_id, timeout=20)
            assert {s.state for s in status.targets.values()} == {StatusState.processed}
    assert peak == 3


async def test_one_agent_spread_over_two_workers_handles_each_signal_once(make_bus) -> None:
    bus = await make_bus()
    seen: dict[str, list[str]] = {}

    def build() -> Agent:
        agent = Agent("risk-manager")

        @agent.on("JOB")
        async def handle(signal: Signal, ctx: Context) -> None:
            seen.setdefault(signal.id, []).append(ctx.delivery.consumer)
            await anyio.sleep(0.01)

        return agent

    first = Worker(bus, build(), concurrency=4, consumer_name="host-a:1:aa")
    second = Worker(bus, build(), concurrency=4, consumer_name="host-b:2:bb")
    async with serving(first), serving(second):
        ids = await bus.publish_many(
            [Signal(type="JOB", source="boss", targets=["risk-manager"]) for _ in range(80)]
        )
        for signal_id in ids:
            await bus.wait(signal_id, timeout=20)
    assert sorted(seen) == sorted(ids)
    assert all(len(consumers) == 1 for consumers in seen.values())
    used = {c for consumers in seen.values() for c in consumers}
    assert used == {"host-a:1:aa", "host-b:2:bb"}


async def test_heartbeats_show_live_workers_and_dead_ones(make_bus) -> None:
    bus = await make_bus()
    agent = Agent("risk-manager", version="3.0.0")

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        return None

    worker = Worker(bus, agent, heartbeat_interval=0.1, consumer_name="host:7:abc")
    async with serving(worker):
        await bus.wait(await bus.publish(Signal(type="JOB", source="b",
                                                targets=["risk-manager"])), timeout=10)

        async def counted() -> list[Heartbeat]:
            beats = await heartbeats(bus)
            return beats if beats and beats[0].processed == 1 else []

        (live,) = await eventually(counted)
        assert (live.agent, live.consumer, live.version, live.topics, live.alive) == (
            "risk-manager", "host:7:abc", "3.0.0", ["JOB"], True)
        # a consumer that stopped beating (SIGKILL, lost host), on a host whose clock runs
        # five minutes ahead: liveness goes by the server's clock, never the host's
        ahead = datetime.now(UTC) + timedelta(minutes=5)
        await beat(bus, [live.model_copy(update={"consumer": "gone:9:dead", "ttl": 0.2,
                                                 "last_beat": ahead})])
        assert ("gone:9:dead", True) in [(h.consumer, h.alive) for h in await heartbeats(bus)]
        await anyio.sleep(0.3)
        beats = await heartbeats(bus)
        assert [(h.consumer, h.alive) for h in beats] == [
            ("host:7:abc", True), ("gone:9:dead", False)]
    # a clean stop deregisters; the dead one stays listed
    assert [(h.consumer, h.alive) for h in await heartbeats(bus)] == [("gone:9:dead", False)]


async def test_stop_lets_running_handlers_finish_and_leaves_the_rest_pending(make_bus) -> None:
    bus = await make_bus(shutdown_grace=5)
    agent = Agent("risk-manager")
    started: list[str] = []
    finished: list[str] = []

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        started.append(signal.id)
        await anyio.sleep(0.3)
        finished.append(signal.id)

    worker = Worker(bus, agent, concurrency=2)
    ids = await bus.publish_many(
        [Signal(type="JOB", source="b", targets=["risk-manager"]) for _ in range(6)]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await eventually(lambda: _value(len(started) == 2))
        worker.stop()
    assert sorted(finished) == sorted(started)
    states = {i: (await bus.status(i)).targets["risk-manager"].state for i in ids}
    assert {states[i] for i in started} == {StatusState.processed}
    assert {states[i] for i in ids if i not in started} == {StatusState.pending}
    (group,) = await bus.groups("JOB")
    assert group.pending == 0  # nothing read and left un-acked: others will get the rest


async def test_retry_from_an_agent_handler(make_bus) -> None:
    bus = await make_bus()
    agent = Agent("risk-manager")
    attempts: list[int] = []

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 2:
            raise Retry(timedelta(milliseconds=10))

    async with serving(Worker(bus, agent)):
        status = await bus.wait(await bus.publish(
            Signal(type="JOB", source="b", targets=["risk-manager"])), timeout=10)
    assert attempts == [1, 2]
    assert status.targets["risk-manager"].attempts == 2


async def test_misconfigured_agents_and_workers_fail_early_with_clear_errors(make_bus) -> None:
    bus = await make_bus()
    agent = Agent("risk-manager")
    with pytest.raises(swarmbus.ConfigurationError, match="must be a function"):
        agent.on("JOB")(42)  # type: ignore[arg-type]
    with pytest.raises(swarmbus.ConfigurationError, match="has no handlers"):
        Worker(bus, agent)

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:  # pragma: no cover
        return None

    with pytest.raises(swarmbus.ConfigurationError, match="already handles 'JOB'"):
        agent.on("JOB")(handle)
    with pytest.raises(swarmbus.ConfigurationError, match="unique"):
        Worker(bus, [agent, agent])
    with pytest.raises(swarmbus.ConfigurationError, match="pydantic model"):
        agent.on("OTHER", data=dict)  # type: ignore[arg-type]
    with pytest.raises(swarmbus.ConfigurationError, match="invalid agent name"):
        Agent("Risk Manager")


async def _value(value: object) -> object:
    return value
