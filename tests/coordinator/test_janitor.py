"""The janitor trims what expired and never what is still owed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from swarmbus import Signal, StatusState
from swarmbus.bus.consume import Delivery
from swarmbus.coordinator import janitor
from swarmbus.coordinator.consolidation import consolidate, ensure_group
from swarmbus.coordinator.lease import Lease
from tests.support import eventually, running

pytestmark = pytest.mark.anyio


def sig(ttl: float, **kw: object) -> Signal:
    return Signal(type="WHALE", source="hunter", targets=["risk", "exec"],
                  **kw).with_ttl(ttl)  # type: ignore[arg-type]


async def sweep(bus, token: int = 1, agents: list[str] | None = None,
                **kw: float) -> janitor.JanitorReport:
    kw.setdefault("dlq_retention", 86_400)
    kw.setdefault("dead_consumer_after", 3_600)
    return await janitor.sweep(bus, token, agents or [], **kw)


async def test_a_down_consumer_loses_nothing_before_expiry_and_sees_expired_after(
    make_bus,
) -> None:
    bus = await make_bus()
    stream = bus.keys.topic("WHALE").stream
    short = [await bus.publish(sig(0.6, data={"n": i})) for i in range(5)]
    long = await bus.publish(sig(3600, data={"n": "long"}))
    late_short = await bus.publish(sig(0.6, data={"n": "after-long"}))
    # "exec" reads everything and acks; "risk" is down the whole time
    handled: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        handled.append(signal.id)

    async def exec_done() -> bool:
        for signal_id in [*short, long, late_short]:
            if not (await bus.status(signal_id)).targets["exec"].state.terminal:
                return False
        return True

    async with running(bus.consumer("exec", {"WHALE": handle})):
        await eventually(exec_done)
    report = await sweep(bus)
    assert report.topic_entries_trimmed == 0  # nothing has expired: all kept for "risk"
    assert await bus.redis.xlen(stream) == 7
    assert (await bus.status(short[0])).targets["risk"].state is StatusState.pending

    await anyio.sleep(0.8)  # the short ones expire
    report = await sweep(bus)
    # up to the long-lived entry by MINID, and the expired one behind it by XDEL: one
    # long-lived signal never pins what expired after it
    assert report.topic_entries_trimmed == 6
    assert [e[0].decode() for e in await bus.redis.xrange(stream)] == [
        (await bus.status(long)).entry_id]
    for signal_id in [*short, late_short]:
        status = await bus.status(signal_id)
        assert status.targets["risk"].state is StatusState.expired
        assert status.targets["exec"].state is StatusState.processed
    assert (await bus.status(long)).targets["risk"].state is StatusState.pending
    (risk,) = [g for g in await bus.groups("WHALE") if g.agent == "risk"]
    assert risk.pending == 0


async def test_pending_entries_of_a_dead_consumer_are_expired_and_acked_on_trim(
    make_bus,
) -> None:
    bus = await make_bus()
    tk = bus.keys.topic("WHALE")
    ids = [await bus.publish(sig(0.3)) for _ in range(3)]
    await bus.redis.xreadgroup("risk", "dead-one", {tk.stream: ">"}, count=10)
    await anyio.sleep(0.5)
    report = await sweep(bus)
    assert report.topic_entries_trimmed == 3
    assert await bus.redis.xlen(tk.stream) == 0
    assert {(await bus.status(i)).targets["risk"].state for i in ids} == {StatusState.expired}
    (risk,) = [g for g in await bus.groups("WHALE") if g.agent == "risk"]
    assert risk.pending == 0


async def test_stm_is_trimmed_only_behind_the_consolidation_watermark(make_bus) -> None:
    bus = await make_bus(stm_ttl=0.2)
    memory = bus.memory("risk")
    for _ in range(10):
        handle = await memory.decide("X", reasoning={"selected": ["a"]})
        await handle.outcome(success=True)
    stm = bus.keys.memory("risk").stm
    await anyio.sleep(0.3)
    await sweep(bus, agents=["risk"])
    assert await bus.redis.xlen(stm) == 20  # nothing consolidated yet: nothing trimmed
    await ensure_group(bus, "risk")
    await consolidate(bus, "risk", "c1", count=8)  # folded 8 of 20
    await sweep(bus, agents=["risk"])
    assert await bus.redis.xlen(stm) == 12  # only what was folded went
    while await consolidate(bus, "risk", "c1"):
        pass
    report = await sweep(bus, agents=["risk"])
    assert await bus.redis.xlen(stm) == 0 and report.stm_entries_trimmed == 12
    (pattern,) = await memory.patterns()
    assert pattern.sample_size == 10


async def test_a_janitor_with_a_stale_token_does_nothing(make_bus) -> None:
    bus = await make_bus()
    await bus.publish(sig(0.1))
    await anyio.sleep(0.2)
    first = Lease(bus, "replica-a", ttl=0.2)
    old_token = await first.acquire()
    assert old_token is not None
    await anyio.sleep(0.3)  # replica-a stalls; its lease runs out
    second = Lease(bus, "replica-b", ttl=5)
    new_token = await second.acquire()
    assert new_token is not None and new_token > old_token
    assert await Lease(bus, "replica-a").acquire() is None  # b holds it now
    await bus.publish(sig(0.1))
    await anyio.sleep(0.2)
    assert (await sweep(bus, token=new_token)).topic_entries_trimmed == 2
    await bus.publish(sig(0.1))
    await anyio.sleep(0.2)
    stale = await sweep(bus, token=old_token)  # replica-a wakes up with its old token
    assert stale.stale_token and stale.topic_entries_trimmed == 0
    assert await bus.redis.xlen(bus.keys.topic("WHALE").stream) == 1


async def test_dead_consumers_go_only_after_their_work_was_claimed(make_bus) -> None:
    bus = await make_bus()
    tk = bus.keys.topic("WHALE")
    await bus.publish(sig(3600))
    await bus.redis.xreadgroup("risk", "dead-holder", {tk.stream: ">"}, count=10)
    await bus.redis.xreadgroup("exec", "dead-idle", {tk.stream: ">"}, count=10)
    await bus.redis.xack(tk.stream, "exec", (await bus.redis.xrange(tk.stream))[0][0])
    await anyio.sleep(0.2)
    report = await sweep(bus, dead_consumer_after=0.1)
    assert report.consumers_removed == ["WHALE/exec/dead-idle"]
    await bus.redis.xautoclaim(tk.stream, "risk", "live-one", 0, "0-0")
    await anyio.sleep(0.2)
    report = await sweep(bus, dead_consumer_after=0.1)
    assert report.consumers_removed == ["WHALE/risk/dead-holder"]


async def test_dead_letters_are_kept_for_their_retention(make_bus) -> None:
    bus = await make_bus()
    tk = bus.keys.topic("WHALE")
    old = int((datetime.now(UTC) - timedelta(days=10)).timestamp() * 1000)
    await bus.redis.xadd(tk.dlq, {"dlq.target": "risk"}, id=f"{old}-0")
    await bus.redis.xadd(tk.dlq, {"dlq.target": "risk"})
    await bus.register_topics(["WHALE"])
    report = await sweep(bus, dlq_retention=7 * 86_400)
    assert report.dead_letters_trimmed == 1
    assert len(await bus.dead_letters("WHALE")) == 1


async def test_coordinator_checkpoints_agent_state_only_when_it_changed(make_bus) -> None:
    from swarmbus.coordinator import Coordinator

    bus = await make_bus()
    state = bus.memory("risk").state
    await state.set({"exposure": 1})
    await bus.memory("idle").decide("X")  # an agent with memory but no state
    coordinator = Coordinator(bus)
    coordinator.agents = ["idle", "risk"]
    token = await coordinator.lease.acquire()
    assert token is not None
    await coordinator.run_due_jobs(token, force=True)
    await coordinator.run_due_jobs(token, force=True)  # nothing changed: no new one
    (auto,) = await state.checkpoints()
    assert (auto.label, auto.data) == ("auto", {"exposure": 1})
    assert await bus.memory("idle").state.checkpoints() == []
    await state.set({"exposure": 2})
    await coordinator.run_due_jobs(token, force=True)
    assert [c.data for c in await state.checkpoints()] == [{"exposure": 2}, {"exposure": 1}]
