"""Agent memory: decisions, outcomes, chains, stats, state, checkpoints, patterns."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import swarmbus
from swarmbus import Agent, Context, Signal, StatusState, Worker
from swarmbus.agents import DecisionNotFound, NullMemory
from swarmbus.coordinator.consolidation import consolidate, ensure_group
from swarmbus.testing import RedisProcess

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def memory_proc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tests.agents.memory_proc", *args], cwd=ROOT,
                   check=True, timeout=120)


async def test_decision_and_outcome_recorded_later_by_id(make_bus) -> None:
    bus = await make_bus()
    memory = bus.memory("risk-manager")
    handle = await memory.decide(
        "RISK_ASSESSMENT", context={"market": {"trend": "bullish"}},
        reasoning={"scores": {"hedge": 0.2, "reduce": 0.8}, "selected": ["reduce"],
                   "confidence": 0.8, "memory_influenced": True, "patterns_applied": ["p1"]},
    )
    assert handle.id.startswith("risk-manager~")
    later = await make_bus()  # another connection, as another process would have
    assert await later.memory("risk-manager").record_outcome(
        handle.id, success=True, quality_score=0.9, latency_ms=42.0, errors=[], data={"pnl": 3}
    )
    assert not await handle.outcome(success=False)  # first outcome wins
    decision = await memory.decision(handle.id)
    assert decision.reasoning.selected == ["reduce"] and decision.reasoning.confidence == 0.8
    assert decision.reasoning.patterns_applied == ["p1"]
    assert decision.outcome is not None
    assert (decision.outcome.success, decision.outcome.quality_score) == (True, 0.9)
    assert decision.outcome.data == {"pnl": 3}
    with pytest.raises(DecisionNotFound):
        await memory.decision("risk-manager~nope")
    with pytest.raises(DecisionNotFound):
        await memory.record_outcome("risk-manager~nope", success=True)


async def test_outcome_from_another_process(redis_server: RedisProcess, namespace: str) -> None:
    async with swarmbus.connect(redis_server.url, namespace=namespace) as bus:
        handle = await bus.memory("risk-manager").decide("RISK_ASSESSMENT")
        await anyio.to_thread.run_sync(
            memory_proc, "outcome", redis_server.url, namespace, "risk-manager", handle.id
        )
        decision = await bus.memory("risk-manager").decision(handle.id)
    assert decision.outcome is not None and decision.outcome.quality_score == 0.75


async def test_chain_across_three_levels_and_two_agents(make_bus) -> None:
    bus = await make_bus()
    hunter, risk = bus.memory("market-hunter"), bus.memory("risk-manager")
    root = await hunter.decide("SIGNAL_GENERATION")
    middle = await risk.decide("RISK_ASSESSMENT", parent_decision_id=root.id)
    leaf_a = await risk.decide("TRADE_EXECUTION", parent_decision_id=middle.id)
    leaf_b = await hunter.decide("SIGNAL_GENERATION", parent_decision_id=middle.id)
    unrelated = await risk.decide("RISK_ASSESSMENT")
    from_middle = [d.id for d in await risk.chain(middle.id)]
    assert from_middle[:2] == [root.id, middle.id]
    assert set(from_middle[2:]) == {leaf_a.id, leaf_b.id}
    from_leaf = [d.id for d in await risk.chain(leaf_a.id)]
    assert from_leaf == [root.id, middle.id, leaf_a.id]
    from_root = [d.id for d in await hunter.chain(root.id)]
    assert from_root[:2] == [root.id, middle.id] and unrelated.id not in from_root


async def test_stats_equal_a_brute_force_computation(make_bus) -> None:
    bus = await make_bus()
    memory = bus.memory("risk-manager")
    rng = random.Random(42)
    made = []
    for _ in range(300):
        dtype = rng.choice(["RISK_ASSESSMENT", "TRADE_EXECUTION"])
        confidence = rng.choice([None, round(rng.random(), 3)])
        handle = await memory.decide(dtype, reasoning={"confidence": confidence})
        outcome = None
        if rng.random() < 0.8:
            outcome = (rng.random() < 0.7, rng.choice([None, round(rng.random(), 3)]),
                       rng.choice([None, rng.lognormvariate(3, 1)]))
            await handle.outcome(success=outcome[0], quality_score=outcome[1],
                                 latency_ms=outcome[2])
        made.append((dtype, confidence, outcome))

    for dtype in (None, "RISK_ASSESSMENT", "TRADE_EXECUTION"):
        rows = [m for m in made if dtype is None or m[0] == dtype]
        outs = [m[2] for m in rows if m[2] is not None]
        confs = [m[1] for m in rows if m[1] is not None]
        quals = [o[1] for o in outs if o[1] is not None]
        lats = sorted(o[2] for o in outs if o[2] is not None)
        stats = await memory.stats(window=86_400, decision_type=dtype)
        assert stats.count == len(rows)
        assert stats.outcomes == len(outs)
        assert stats.success_rate == pytest.approx(sum(o[0] for o in outs) / len(outs))
        assert stats.mean_confidence == pytest.approx(statistics.fmean(confs))
        assert stats.mean_quality == pytest.approx(statistics.fmean(quals))
        for q, got in ((0.50, stats.latency_p50_ms), (0.95, stats.latency_p95_ms)):
            exact = lats[max(0, -(-int(q * len(lats) * 1000) // 1000) - 1)]
            assert got == pytest.approx(exact, rel=0.12), (q, got, exact)
    empty = await memory.stats(window=3600, decision_type="NEVER_MADE")
    assert (empty.count, empty.success_rate, empty.latency_p50_ms) == (0, None, None)


async def test_decision_queries_filter_by_type_success_and_time(make_bus) -> None:
    bus = await make_bus()
    memory = bus.memory("risk-manager")
    ids = []
    for i in range(12):
        handle = await memory.decide("A" if i % 2 else "B")
        if i % 3 == 0:
            await handle.outcome(success=i % 4 == 0)
        ids.append(handle.id)
    newest_first = [d.id for d in await memory.decisions(limit=100)]
    assert newest_first == ids[::-1]
    assert [d.id for d in await memory.decisions(decision_type="A", limit=3)] == \
        [ids[11], ids[9], ids[7]]
    assert {d.id for d in await memory.decisions(success=True)} == {ids[0]}
    assert {d.id for d in await memory.decisions(success=False)} == {ids[3], ids[6], ids[9]}
    assert await memory.decisions(until=(await memory.decision(ids[0])).created_at
                                  .replace(year=2000)) == []


async def test_state_checkpoint_and_rollback_restore_exactly(make_bus) -> None:
    bus = await make_bus()
    state = bus.memory("risk-manager").state
    assert (await state.get()).version == 0
    first = await state.set({"exposure": 0.5, "positions": {"BTC": 1.5}, "notes": ["a"]})
    checkpoint = await state.checkpoint("before-rebalance")
    assert checkpoint is not None and checkpoint.version == first.version
    await state.update(lambda s: {**s, "exposure": 0.9, "positions": {}})
    with pytest.raises(swarmbus.StateConflict, match="version"):
        await state.set({"x": 1}, expected_version=first.version)
    restored = await state.rollback()
    assert restored.data == {"exposure": 0.5, "positions": {"BTC": 1.5}, "notes": ["a"]}
    assert restored.version == first.version + 2  # a rollback is a new version
    assert await state.checkpoint("after-rollback", only_if_changed=True) is not None
    assert await state.checkpoint("unchanged", only_if_changed=True) is None
    for i in range(25):
        await state.set({"i": i})
        await state.checkpoint(f"c{i}")
    kept = await state.checkpoints()
    assert len(kept) == 20 and kept[0].label == "c24" and kept[-1].label == "c5"
    assert (await state.rollback(kept[-1].id)).data == {"i": 5}
    with pytest.raises(swarmbus.NotFound):
        await state.rollback("no-such-checkpoint")


@pytest.mark.slow
async def test_concurrent_updates_from_eight_processes_lose_nothing(
    redis_server: RedisProcess, namespace: str
) -> None:
    procs = [
        await anyio.open_process([sys.executable, "-m", "tests.agents.memory_proc", "increment",
                                  redis_server.url, namespace, "counter", "200"], cwd=ROOT)
        for _ in range(8)
    ]
    with anyio.fail_after(120):
        for p in procs:
            assert await p.wait() == 0
    async with swarmbus.connect(redis_server.url, namespace=namespace) as bus:
        state = await bus.memory("counter").state.get()
    assert state.data == {"count": 1600}
    assert state.version == 1600


async def test_handler_decisions_are_deterministic_and_show_in_status(make_bus) -> None:
    bus = await make_bus(retry_backoff=0.01)
    risk = Agent("risk-manager", pattern_features=["market.trend", "market.size"],
                 pattern_bins={"market.size": [10, 100]})
    attempts: list[int] = []

    @risk.on("WHALE")
    async def assess(signal: Signal, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        decision = await ctx.decide("RISK_ASSESSMENT", reasoning={"selected": ["hedge"]})
        await ctx.publish("ALERT", targets=["nobody"])
        if ctx.attempt == 1:
            raise RuntimeError("crash after deciding")
        await decision.outcome(success=True, quality_score=1.0)

    async with anyio.create_task_group() as tg:
        worker = Worker(bus, risk)
        await tg.start(worker.run)
        signal_id = await bus.publish(Signal(
            type="WHALE", source="hunter", targets=["risk-manager"],
            context={"market": {"trend": "bullish", "size": 42}}))
        status = await bus.wait(signal_id, timeout=10)
        worker.stop()
    assert attempts == [1, 2]
    decisions = await bus.memory("risk-manager").decisions()
    assert len(decisions) == 1  # the re-run found its decision instead of making another
    (decision,) = decisions
    assert status.targets["risk-manager"].state is StatusState.processed
    assert status.targets["risk-manager"].decision_id == decision.id
    assert decision.signal_id == signal_id
    assert decision.conditions == {"market.trend": "bullish", "market.size": "[10,100)"}
    assert decision.outcome is not None and len(decision.outcome.signals_generated) == 1


async def test_memory_off_agent_runs_the_same_handler_and_writes_nothing(make_bus) -> None:
    bus = await make_bus()
    agent = Agent("forgetful", memory=False)
    seen: list[object] = []

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        assert isinstance(ctx.memory, NullMemory)
        known = await ctx.memory.match(signal.context, decision_type="X")
        decision = await ctx.decide("X", reasoning={"selected": ["a"]})
        await decision.outcome(success=True)
        await ctx.state.update(lambda s: {**s, "n": 1})
        seen.append((known, await ctx.memory.decisions(), (await ctx.state.get()).data,
                     await ctx.memory.patterns(), (await ctx.memory.stats()).count))

    async with anyio.create_task_group() as tg:
        worker = Worker(bus, agent)
        await tg.start(worker.run)
        status = await bus.wait(await bus.publish(
            Signal(type="JOB", source="b", targets=["forgetful"])), timeout=10)
        worker.stop()
    assert status.targets["forgetful"].state is StatusState.processed
    assert seen == [([], [], {}, [], 0)]
    assert await bus.redis.keys(bus.keys.memory("forgetful").prefix + "*") == []


async def test_patterns_read_api_over_consolidated_outcomes(make_bus) -> None:
    bus = await make_bus()
    memory = bus.memory("risk-manager")
    await bus.redis.set(bus.keys.memory("risk-manager").profile,
                        b'{"features": ["market.trend"], "bins": {}}')
    plan = [("bullish", "follow", True)] * 30 + [("bullish", "hedge", True)] * 3 + \
        [("bullish", "hedge", False)] * 1 + [("bearish", "reduce", False)] * 10
    for trend, choice, ok in plan:
        h = await memory.decide("STRATEGY_SELECTION", context={"market": {"trend": trend}},
                                reasoning={"selected": [choice]})
        await h.outcome(success=ok, quality_score=0.8 if ok else 0.1)
    await ensure_group(bus, "risk-manager")
    while await consolidate(bus, "risk-manager", "c1"):
        pass
    best = await memory.patterns(limit=10)
    assert [(p.choice, p.sample_size) for p in best] == [
        (["follow"], 30), (["hedge"], 4), (["reduce"], 10)]
    follow = best[0]
    assert follow.status == "active" and follow.success_rate == 1.0
    assert follow.conditions == {"market.trend": "bullish"}
    assert follow.confidence == pytest.approx(swarmbus.agents.patterns.wilson_lower_bound(30, 30))
    assert follow.description == (
        "when market.trend=bullish, choosing [follow] succeeded 100% of 30 times")
    assert best[1].status == "candidate" and best[1].mean_quality == pytest.approx(0.625)
    assert [p.choice for p in await memory.match({"market": {"trend": "bullish"}},
                                                 decision_type="STRATEGY_SELECTION")] == \
        [["follow"], ["hedge"]]
    assert await memory.match({"market": {"trend": "sideways"}},
                              decision_type="STRATEGY_SELECTION") == []
    assert await memory.patterns(min_confidence=0.5) == [follow]
    assert (await memory.pattern(follow.id)).version == 30
    other = bus.memory("trade-executor")
    assert await other.patterns(include_shared=True) == []
    await memory.share(follow.id, ["trade-executor"])
    (shared,) = await other.patterns(include_shared=True)
    assert shared.id == follow.id and shared.shared_with == ["trade-executor"]


async def _value(value: object) -> object:
    return value
