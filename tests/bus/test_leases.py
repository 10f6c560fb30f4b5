"""The lease keeper: renews from its own thread, costs nothing while idle, renews any
number of entries, notices entries another consumer took, and reports a stalled loop."""

from __future__ import annotations

import time

import anyio
import pytest
from structlog.testing import capture_logs

from swarmbus import Signal, StatusState
from swarmbus.bus.consume import Delivery
from swarmbus.bus.leases import LeaseKeeper
from tests.support import eventually, running

pytestmark = pytest.mark.anyio


async def test_an_idle_keeper_makes_no_round_trip(make_bus) -> None:
    bus = await make_bus(claim_idle=0.2)

    async def handle(signal: Signal, delivery: Delivery) -> None:
        return None

    consumer = bus.consumer("risk", {"JOB": handle})
    async with running(consumer):
        await bus.wait(await bus.publish(Signal(type="JOB", source="a", targets=["risk"])),
                       timeout=10)
        before = consumer.keeper.round_trips
        await anyio.sleep(0.5)  # ten renewal intervals with nothing held
        assert consumer.keeper.round_trips == before


async def test_a_handler_longer_than_claim_idle_keeps_its_lease(make_bus) -> None:
    bus = await make_bus(claim_idle=0.3)
    calls: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        calls.append(delivery.consumer)
        time.sleep(1.0)  # noqa: ASYNC251 - blocks the loop on purpose; the keeper renews

    first = bus.consumer("risk", {"JOB": handle}, consumer_name="first")
    second = bus.consumer("risk", {"JOB": handle}, consumer_name="second")
    async with running(first, second):
        signal_id = await bus.publish(Signal(type="JOB", source="a", targets=["risk"]))
        status = await bus.wait(signal_id, timeout=10)
        await anyio.sleep(0.5)
    assert status.targets["risk"].state is StatusState.processed
    assert len(calls) == 1
    assert first.keeper.round_trips + second.keeper.round_trips >= 2


async def test_renews_thousands_of_entries_in_chunks(make_bus) -> None:
    """More entries than one Lua ``unpack`` can take (~8,000): all renewed, none lost.

    (1,200 on the embedded backend, whose Lua is much slower: still several chunks.)
    """
    bus = await make_bus(claim_idle=60)
    n = 1200 if bus.embedded else 9000
    tk = bus.keys.topic("BULK")
    await bus.redis.xgroup_create(tk.stream, "risk", id="0", mkstream=True)
    async with bus.redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(tk.stream, {"n": str(i)})
        await pipe.execute()
    read = await bus.redis.xreadgroup("risk", "me", {tk.stream: ">"}, count=10_000)
    ids = [eid.decode() for eid, _ in read[0][1]]
    assert len(ids) == n
    await anyio.sleep(0.3)
    keeper = LeaseKeeper(bus)
    owner = (tk.stream, "risk", "me")
    keeper.hold(owner, ids)
    client = bus.sync_client()
    started = time.monotonic()
    try:
        await anyio.to_thread.run_sync(keeper._renew, client)
    finally:
        client.close()
    took_ms = (time.monotonic() - started) * 1000
    assert keeper.renewed == n
    assert keeper.take_lost(owner) == []
    idle = await bus.redis.xpending_range(tk.stream, "risk", "-", "+", n)
    assert len(idle) == n
    # every one reset by the renewal (they had been idle 300 ms before it)
    assert max(p["time_since_delivered"] for p in idle) <= took_ms + 100


async def test_an_entry_taken_by_another_consumer_is_reported_lost(make_bus) -> None:
    bus = await make_bus(claim_idle=0.2)
    started = anyio.Event()
    release = anyio.Event()

    async def handle(signal: Signal, delivery: Delivery) -> None:
        started.set()
        await release.wait()

    consumer = bus.consumer("risk", {"JOB": handle}, consumer_name="victim")
    with capture_logs() as logs:
        async with running(consumer):
            await bus.publish(Signal(type="JOB", source="a", targets=["risk"]))
            await started.wait()
            stream = bus.keys.topic("JOB").stream
            (entry,) = await bus.redis.xpending_range(stream, "risk", "-", "+", 10)
            await bus.redis.xclaim(stream, "risk", "thief", 0, [entry["message_id"]],
                                   justid=True)

            async def reported() -> bool:
                return any(e["event"] == "lease_lost" for e in logs)

            await eventually(reported, timeout=5)
            release.set()
    (lost,) = [e for e in logs if e["event"] == "lease_lost"]
    assert lost["entries"] == [entry["message_id"].decode()]


async def test_a_stalled_event_loop_is_reported_with_its_handler_and_signal(make_bus) -> None:
    bus = await make_bus()

    async def assess_whale(signal: Signal, delivery: Delivery) -> None:
        time.sleep(1.4)  # noqa: ASYNC251 - a synchronous SDK call in an async handler

    consumer = bus.consumer("risk", {"WHALE": assess_whale})
    with capture_logs() as logs:
        async with running(consumer):
            signal_id = await bus.publish(Signal(type="WHALE", source="a", targets=["risk"]))
            await bus.wait(signal_id, timeout=10)
            await anyio.sleep(0.3)
    (stall,) = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert stall["handler"].endswith("assess_whale")
    assert (stall["agent"], stall["topic"], stall["signal_id"]) == ("risk", "WHALE", signal_id)
    assert "test_leases.py" in stall["where"] and "assess_whale" in stall["where"]
    (recovered,) = [e for e in logs if e["event"] == "event_loop_recovered"]
    assert 1.0 <= recovered["stalled_for"] < 3.0
