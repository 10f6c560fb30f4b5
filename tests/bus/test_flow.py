"""Publish -> consume -> status, on the embedded backend and on a private redis-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

import swarmbus
from swarmbus import Reject, Retry, Signal, StatusState
from swarmbus.bus.consume import Delivery
from tests.support import eventually, running

pytestmark = pytest.mark.anyio


def sig(topic: str = "WHALE_ACTIVITY", **kw: object) -> Signal:
    kw.setdefault("source", "market-hunter")
    return Signal(type=topic, **kw)  # type: ignore[arg-type]


async def test_two_targets_each_processed(make_bus) -> None:
    bus = await make_bus()
    seen: dict[str, list[str]] = {"risk": [], "exec": []}

    def handler(agent: str):
        async def handle(signal: Signal, delivery: Delivery) -> None:
            assert delivery.agent == agent
            seen[agent].append(signal.id)

        return handle

    risk = bus.consumer("risk", {"WHALE_ACTIVITY": handler("risk")})
    execu = bus.consumer("exec", {"WHALE_ACTIVITY": handler("exec")})
    async with running(risk, execu):
        ids = await bus.publish_many(
            [sig(targets=["risk", "exec"], data={"n": i}) for i in range(50)]
        )
        for signal_id in ids:
            status = await bus.wait(signal_id, timeout=10)
            assert {t: s.state for t, s in status.targets.items()} == {
                "risk": StatusState.processed,
                "exec": StatusState.processed,
            }
            assert status.targets["risk"].attempts == 1
    assert sorted(seen["risk"]) == sorted(ids)
    assert sorted(seen["exec"]) == sorted(ids)


async def test_status_is_pending_before_any_consumer(make_bus) -> None:
    bus = await make_bus()
    signal_id = await bus.publish(sig(targets=["risk"]))
    status = await bus.status(signal_id)
    assert status.type == "WHALE_ACTIVITY"
    assert status.targets["risk"].state is StatusState.pending
    assert not status.done


async def test_target_that_never_ran_gets_its_signals(make_bus) -> None:
    bus = await make_bus()
    ids = [await bus.publish(sig(targets=["late-joiner"], data={"n": i})) for i in range(5)]
    got: list[int] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        got.append(signal.data["n"])

    async with running(bus.consumer("late-joiner", {"WHALE_ACTIVITY": handle})):
        for signal_id in ids:
            await bus.wait(signal_id, timeout=10)
    assert sorted(got) == [0, 1, 2, 3, 4]


async def test_publishing_the_same_signal_twice_creates_one_entry(make_bus) -> None:
    bus = await make_bus()
    signal = sig(targets=["risk"])
    first = await bus.publish(signal)
    again = await bus.publish(signal)
    batch = await bus.publish_many([signal, signal])
    assert first == again == signal.id
    assert batch == [signal.id, signal.id]
    assert await bus.redis.xlen(bus.keys.topic("WHALE_ACTIVITY").stream) == 1


async def test_broadcast_goes_to_every_subscriber_at_publish_time(make_bus) -> None:
    bus = await make_bus()
    hits: list[str] = []

    def handler(agent: str):
        async def handle(signal: Signal, delivery: Delivery) -> None:
            hits.append(agent)

        return handle

    a = bus.consumer("agent-a", {"NEWS": handler("agent-a")})
    b = bus.consumer("agent-b", {"NEWS": handler("agent-b")})
    async with running(a, b):
        signal_id = await bus.publish(sig("NEWS"))
        status = await bus.wait(signal_id, timeout=10)
    assert set(status.targets) == {"agent-a", "agent-b"}
    assert sorted(hits) == ["agent-a", "agent-b"]


async def test_agent_not_targeted_acks_without_handling(make_bus) -> None:
    bus = await make_bus()
    calls: list[str] = []

    def handler(agent: str):
        async def handle(signal: Signal, delivery: Delivery) -> None:
            calls.append(agent)

        return handle

    a = bus.consumer("agent-a", {"NEWS": handler("agent-a")})
    b = bus.consumer("agent-b", {"NEWS": handler("agent-b")})
    async with running(a, b):
        signal_id = await bus.publish(sig("NEWS", targets=["agent-a"]))
        status = await bus.wait(signal_id, timeout=10)

        async def b_acked() -> bool:
            groups = {g.agent: g for g in await bus.groups("NEWS")}
            return groups["agent-b"].pending == 0 and b.stats.skipped == 1

        await eventually(b_acked)
    assert set(status.targets) == {"agent-a"}
    assert calls == ["agent-a"]


async def test_handler_that_always_raises_is_dead_lettered_after_max_attempts(make_bus) -> None:
    bus = await make_bus(max_attempts=4, retry_backoff=0.01)
    attempts: list[int] = []
    fine: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        if signal.data.get("poison"):
            attempts.append(delivery.attempt)
            raise ValueError("cannot price this whale")
        fine.append(signal.id)

    async with running(bus.consumer("risk", {"WHALE_ACTIVITY": handle})):
        poison = await bus.publish(sig(targets=["risk"], data={"poison": True}))
        others = await bus.publish_many([sig(targets=["risk"]) for _ in range(20)])
        status = await bus.wait(poison, timeout=10)
        for signal_id in others:
            assert (await bus.wait(signal_id, timeout=10)).targets["risk"].state == "processed"

    assert attempts == [1, 2, 3, 4]
    target = status.targets["risk"]
    assert target.state is StatusState.failed
    assert target.attempts == 4
    assert "cannot price this whale" in (target.error or "")
    (letter,) = await bus.dead_letters("WHALE_ACTIVITY")
    assert letter.signal is not None and letter.signal.id == poison
    assert (letter.target, letter.error_type, letter.attempts) == ("risk", "ValueError", 4)
    assert letter.error == "cannot price this whale"
    assert sorted(fine) == sorted(others)


async def test_reject_dead_letters_at_once_and_retry_asks_again(make_bus) -> None:
    bus = await make_bus(max_attempts=5, retry_backoff=10)
    calls: dict[str, int] = {"reject": 0, "retry": 0}

    async def handle(signal: Signal, delivery: Delivery) -> None:
        kind = signal.data["kind"]
        calls[kind] += 1
        if kind == "reject":
            raise Reject("bad instrument")
        if delivery.attempt < 3:
            raise Retry(0.01)  # much shorter than retry_backoff: the handler's delay wins

    async with running(bus.consumer("risk", {"WHALE_ACTIVITY": handle})):
        rejected = await bus.publish(sig(targets=["risk"], data={"kind": "reject"}))
        retried = await bus.publish(sig(targets=["risk"], data={"kind": "retry"}))
        rej = await bus.wait(rejected, timeout=10)
        ret = await bus.wait(retried, timeout=10)
    assert calls == {"reject": 1, "retry": 3}
    assert rej.targets["risk"].state is StatusState.failed
    assert rej.targets["risk"].attempts == 1
    assert "bad instrument" in (rej.targets["risk"].error or "")
    assert ret.targets["risk"].state is StatusState.processed
    assert ret.targets["risk"].attempts == 3


async def test_handler_return_value_is_recorded_as_decision_id(make_bus) -> None:
    bus = await make_bus()

    async def handle(signal: Signal, delivery: Delivery) -> str:
        return "dec-42"

    async with running(bus.consumer("risk", {"WHALE_ACTIVITY": handle})):
        status = await bus.wait(await bus.publish(sig(targets=["risk"])), timeout=10)
    assert status.targets["risk"].decision_id == "dec-42"
    assert status.targets["risk"].consumer is not None


async def test_garbage_on_the_stream_is_dead_lettered_and_worker_keeps_running(make_bus) -> None:
    bus = await make_bus()
    stream = bus.keys.topic("WHALE_ACTIVITY").stream
    handled: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        handled.append(signal.id)

    consumer = bus.consumer("risk", {"WHALE_ACTIVITY": handle})
    async with running(consumer):
        garbage = [
            {"hello": "world"},  # not an envelope at all
            {"v": "1", "i": "abc", "d": "{not json"},  # not JSON
            {"v": "9", "i": "abc", "d": "{}"},  # wrong version
            {"v": "1", "d": "{}"},  # missing id
            {"v": "1", "i": "abc"},  # missing data
            {"v": "1", "i": "abc", "d": '{"type": "X"}'},  # missing required fields
            {"v": "1", "i": "abc", "d": "[1, 2]"},  # JSON but not an object
            {"v": "1", "i": "abc", "d": b"\xff" * (2 * 1024 * 1024)},  # 2 MiB blob
        ]
        for fields in garbage:
            await bus.redis.xadd(stream, fields)
        good = await bus.publish(sig(targets=["risk"]))
        assert (await bus.wait(good, timeout=10)).targets["risk"].state == "processed"

        async def all_dead() -> list[swarmbus.DeadLetter]:
            letters = await bus.dead_letters("WHALE_ACTIVITY")
            return letters if len(letters) == len(garbage) else []

        letters = await eventually(all_dead)
    assert handled == [good]
    assert consumer.stats.undecodable == len(garbage)
    reasons = [d.error for d in letters]
    assert all(d.error_type == "DecodeError" and d.target == "risk" for d in letters)
    assert "no 'v' field" in reasons[0]
    assert "not valid JSON" in reasons[1]
    assert "version" in reasons[2]
    assert "over the limit" in reasons[7]
    # nothing lost: the original fields travel with the dead letter
    assert letters[0].raw == {"hello": "world"}
    raw = await bus.redis.xrange(bus.keys.topic("WHALE_ACTIVITY").dlq)
    assert raw[7][1][b"d"] == b"\xff" * (2 * 1024 * 1024)
    assert (await bus.groups("WHALE_ACTIVITY"))[0].pending == 0


async def test_expired_signal_is_not_handled(make_bus) -> None:
    bus = await make_bus()
    called: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        called.append(signal.id)

    old = datetime.now(UTC) - timedelta(hours=2)
    expired = sig(targets=["risk"], created_at=old, expires_at=old + timedelta(hours=1))
    signal_id = await bus.publish(expired)
    async with running(bus.consumer("risk", {"WHALE_ACTIVITY": handle})):
        status = await bus.wait(signal_id, timeout=10)
    assert status.targets["risk"].state is StatusState.expired
    assert called == []


async def test_oversized_payload_is_refused_and_nothing_is_written(make_bus) -> None:
    bus = await make_bus(max_payload_bytes=1024)
    with pytest.raises(swarmbus.PayloadTooLarge, match="over the limit of 1024"):
        await bus.publish(sig(targets=["risk"], data={"blob": "x" * 2000}))
    with pytest.raises(swarmbus.PayloadTooLarge):
        await bus.publish_many([sig(targets=["risk"]), sig(data={"blob": "x" * 2000})])
    assert await bus.redis.exists(bus.keys.topic("WHALE_ACTIVITY").stream) == 0


async def test_unknown_signal_and_wait_timeout(make_bus) -> None:
    bus = await make_bus()
    with pytest.raises(swarmbus.SignalNotFound, match="nope"):
        await bus.status("nope")
    signal_id = await bus.publish(sig(targets=["nobody-home"]))
    with pytest.raises(swarmbus.WaitTimeout, match="nobody-home"):
        await bus.wait(signal_id, timeout=0.2)


async def test_long_handler_is_not_reclaimed_while_its_worker_lives(make_bus) -> None:
    bus = await make_bus(claim_idle=0.3)
    runs: list[str] = []

    async def slow(signal: Signal, delivery: Delivery) -> None:
        runs.append(delivery.consumer)
        await anyio.sleep(1.5)  # five times claim_idle

    first = bus.consumer("risk", {"WHALE_ACTIVITY": slow}, consumer_name="first")
    second = bus.consumer("risk", {"WHALE_ACTIVITY": slow}, consumer_name="second")
    async with running(first):
        signal_id = await bus.publish(sig(targets=["risk"]))
        await eventually(lambda: _async(runs))
        async with running(second):
            status = await bus.wait(signal_id, timeout=10)
    assert runs == ["first"]
    assert second.stats.reclaimed == 0
    assert status.targets["risk"].state is StatusState.processed
    assert status.targets["risk"].attempts == 1


async def test_entries_of_a_dead_consumer_are_reclaimed(make_bus) -> None:
    bus = await make_bus(claim_idle=0.3)
    tk = bus.keys.topic("WHALE_ACTIVITY")
    ids = await bus.publish_many([sig(targets=["risk"]) for _ in range(10)])
    # a consumer reads everything, then dies without acking
    await bus.redis.xreadgroup("risk", "dead-consumer", {tk.stream: ">"}, count=100)
    handled: list[int] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        handled.append(delivery.attempt)

    live = bus.consumer("risk", {"WHALE_ACTIVITY": handle})
    async with running(live):
        for signal_id in ids:
            assert (await bus.wait(signal_id, timeout=10)).targets["risk"].state == "processed"
    assert live.stats.reclaimed == 10
    assert sorted(handled) == [1] * 10  # the dead consumer never marked them delivered


async def test_vanished_group_is_recreated_and_finished_work_not_redone(make_bus) -> None:
    bus = await make_bus()
    tk = bus.keys.topic("WHALE_ACTIVITY")
    handled: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        handled.append(signal.id)

    async with running(bus.consumer("risk", {"WHALE_ACTIVITY": handle})):
        first = await bus.publish(sig(targets=["risk"]))
        await bus.wait(first, timeout=10)
        await bus.redis.xgroup_destroy(tk.stream, "risk")
        second = await bus.publish(sig(targets=["risk"]))
        await bus.wait(second, timeout=10)
    assert handled == [first, second]


async def test_tail_reads_without_joining_a_group(make_bus) -> None:
    bus = await make_bus()
    ids = await bus.publish_many([sig(targets=["risk"], data={"n": i}) for i in range(5)])
    await bus.publish(sig("OTHER_TOPIC", targets=["risk"]))
    everything = [s async for s in bus.tail()]
    # within a topic, entry order; across topics, order by time (same-ms ties undefined)
    assert [s.id for s in everything if s.type == "WHALE_ACTIVITY"] == ids
    assert len(everything) == 6
    last_two = [s.data["n"] async for s in bus.tail("WHALE_ACTIVITY", last=2)]
    assert last_two == [3, 4]
    globbed = [s.type async for s in bus.tail("OTHER*")]
    assert globbed == ["OTHER_TOPIC"]
    recent = [s.id async for s in bus.tail("WHALE_ACTIVITY", since=timedelta(minutes=5))]
    assert recent == ids
    assert [s.id async for s in bus.tail("WHALE_ACTIVITY", since=datetime.now(UTC)
                                         + timedelta(minutes=1))] == []
    groups = await bus.groups("WHALE_ACTIVITY")
    assert [g.consumers for g in groups] == [0]  # the group made at publish, nobody joined


async def test_tail_follow_sees_a_signal_published_after_it_started(make_bus) -> None:
    bus = await make_bus()
    await bus.publish(sig(targets=["risk"], data={"n": "old"}))
    seen: list[object] = []

    async def follow() -> None:
        async for signal in bus.tail("WHALE_*", follow=True):
            seen.append(signal.data["n"])
            return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.3)
            await bus.publish(sig(targets=["risk"], data={"n": "new"}))
    assert seen == ["new"]


async def test_groups_show_pending_lag_and_consumers(make_bus) -> None:
    bus = await make_bus()
    await bus.publish_many([sig(targets=["risk"]) for _ in range(3)])
    (group,) = await bus.groups("WHALE_ACTIVITY")
    assert (group.topic, group.agent, group.pending, group.consumers) == (
        "WHALE_ACTIVITY", "risk", 0, 0,
    )
    assert group.lag == 3
    stream = bus.keys.topic("WHALE_ACTIVITY").stream
    await bus.redis.xreadgroup("risk", "c1", {stream: ">"}, count=2)
    (group,) = await bus.groups()
    assert (group.pending, group.lag, group.consumers) == (2, 1, 1)


async def test_dead_letters_replay_and_purge(make_bus) -> None:
    bus = await make_bus(max_attempts=1)
    broken = True

    async def handle(signal: Signal, delivery: Delivery) -> None:
        if broken:
            raise RuntimeError("downstream down")

    async with running(bus.consumer("risk", {"WHALE_ACTIVITY": handle})):
        ids = await bus.publish_many([sig(targets=["risk"]) for _ in range(3)])
        for signal_id in ids:
            assert (await bus.wait(signal_id, timeout=10)).targets["risk"].state == "failed"
        assert len(await bus.dead_letters("WHALE_ACTIVITY")) == 3
        broken = False
        letters = await bus.dead_letters("WHALE_ACTIVITY")
        assert await bus.replay_dead_letters("WHALE_ACTIVITY", [letters[0].id]) == 1
        status = await bus.wait(ids[0], timeout=10)
        assert status.targets["risk"].state is StatusState.processed
        assert len(await bus.dead_letters("WHALE_ACTIVITY")) == 2
    assert await bus.purge_dead_letters("WHALE_ACTIVITY") == 2
    assert await bus.dead_letters("WHALE_ACTIVITY") == []


async def test_invalid_names_are_refused_with_clear_errors(make_bus) -> None:
    bus = await make_bus()
    with pytest.raises(swarmbus.ConfigurationError, match="invalid agent name 'Risk Manager'"):
        bus.consumer("Risk Manager", {"X": _noop})
    with pytest.raises(swarmbus.ConfigurationError, match="invalid topic"):
        bus.consumer("risk", {"bad topic": _noop})
    with pytest.raises(swarmbus.InvalidSignal, match=r"takes a swarmbus\.Signal"):
        await bus.publish({"type": "X"})  # type: ignore[arg-type]


async def _noop(signal: Signal, delivery: Delivery) -> None:
    return None


async def _async(value: object) -> object:
    return value


async def test_entries_waiting_for_a_retry_are_handed_back_at_once_on_stop(make_bus) -> None:
    bus = await make_bus(claim_idle=30, retry_backoff=60)  # neither would fire in this test
    calls: list[str] = []

    async def flaky(signal: Signal, delivery: Delivery) -> None:
        calls.append(delivery.consumer)
        if delivery.consumer == "first":
            raise RuntimeError("try again later")

    first = bus.consumer("risk", {"WHALE_ACTIVITY": flaky}, consumer_name="first")
    async with running(first):
        signal_id = await bus.publish(sig(targets=["risk"]))
        await eventually(lambda: _async(first.stats.retried == 1))
    second = bus.consumer("risk", {"WHALE_ACTIVITY": flaky}, consumer_name="second")
    async with running(second):
        with anyio.fail_after(5):
            status = await bus.wait(signal_id, timeout=5)
    assert calls == ["first", "second"]
    assert status.targets["risk"].state is StatusState.processed


async def test_a_destroyed_group_of_a_target_that_never_ran_loses_nothing(make_bus) -> None:
    bus = await make_bus()
    owed = await bus.publish(sig(targets=["late-joiner"]))
    await bus.redis.xgroup_destroy(bus.keys.topic("WHALE_ACTIVITY").stream, "late-joiner")
    got: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        got.append(signal.id)

    async with running(bus.consumer("late-joiner", {"WHALE_ACTIVITY": handle})):
        status = await bus.wait(owed, timeout=10)
    assert got == [owed]
    assert status.targets["late-joiner"].state is StatusState.processed
