"""Backup: export -> import into an empty namespace gives identical query results."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

import swarmbus
from swarmbus.coordinator.backup import BackupError, export_backup, import_backup
from swarmbus.coordinator.consolidation import consolidate, ensure_group

pytestmark = pytest.mark.anyio
AGENTS = ["risk-manager", "trade-executor"]


async def fill(bus: swarmbus.Bus) -> None:
    rng = random.Random(5)
    for agent in AGENTS:
        await bus.redis.set(bus.keys.memory(agent).profile, b'{"features": ["market.trend"]}')
    parents: list[str] = []
    for i in range(120):
        agent = AGENTS[i % 2]
        handle = await bus.memory(agent).decide(
            rng.choice(["RISK_ASSESSMENT", "TRADE_EXECUTION"]),
            context={"market": {"trend": rng.choice(["up", "down"])}},
            reasoning={"selected": [rng.choice(["a", "b"])], "confidence": rng.random()},
            parent_decision_id=rng.choice(parents) if parents and i % 3 else None,
        )
        parents.append(handle.id)
        if i % 5:
            await handle.outcome(success=rng.random() < 0.6, quality_score=rng.random(),
                                 latency_ms=rng.uniform(1, 100), data={"i": i})
    for agent in AGENTS:
        await ensure_group(bus, agent)
        while await consolidate(bus, agent, "c"):
            pass
        state = bus.memory(agent).state
        for n in range(3):
            await state.set({"n": n, "agent": agent})
            await state.checkpoint(f"c{n}")
    best = (await bus.memory("risk-manager").patterns(limit=1))[0]
    await bus.memory("risk-manager").share(best.id, ["trade-executor"])


async def snapshot(bus: swarmbus.Bus) -> dict[str, object]:
    out: dict[str, object] = {}
    for agent in AGENTS:
        memory = bus.memory(agent)
        decisions = await memory.decisions(limit=1000)
        out[f"{agent}/decisions"] = decisions
        out[f"{agent}/ok"] = await memory.decisions(success=True, limit=1000)
        out[f"{agent}/chains"] = [await memory.chain(d.id) for d in decisions[:10]]
        out[f"{agent}/stats"] = [
            (await memory.stats(decision_type=t)).model_dump(exclude={"window_start"})
            for t in (None, "RISK_ASSESSMENT", "TRADE_EXECUTION")
        ]
        patterns = await memory.patterns(limit=100, include_shared=True)
        out[f"{agent}/patterns"] = patterns
        out[f"{agent}/match"] = await memory.match({"market": {"trend": "up"}},
                                                   decision_type="RISK_ASSESSMENT")
        out[f"{agent}/state"] = await memory.state.get()
        out[f"{agent}/checkpoints"] = await memory.state.checkpoints()
    return out


async def test_round_trip_gives_identical_query_results(make_bus, tmp_path: Path) -> None:
    source = await make_bus(namespace="src-" + tmp_path.name[-8:])
    await fill(source)
    path = tmp_path / "memory.jsonl.gz"
    seen: list[int] = []
    written = await export_backup(source, path, progress=seen.append)
    assert written > 120 and seen[-1] == written
    target = await make_bus(namespace="dst-" + tmp_path.name[-8:])
    assert await import_backup(target, path) == written
    before, after = await snapshot(source), await snapshot(target)
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == before[key], key
    # the coordinator has nothing to re-learn: no STM events were replayed
    assert await target.redis.exists(target.keys.memory("risk-manager").stm) == 0


async def test_import_refuses_a_non_empty_namespace_unless_merge(
    make_bus, tmp_path: Path
) -> None:
    source = await make_bus(namespace="src2-" + tmp_path.name[-8:])
    await fill(source)
    path = tmp_path / "b.jsonl.gz"
    await export_backup(source, path)
    with pytest.raises(swarmbus.Conflict, match="not empty"):
        await import_backup(source, path)
    before = await snapshot(source)
    await import_backup(source, path, merge=True)  # everything already there: kept as is
    assert await snapshot(source) == before


async def test_broken_files_are_refused_with_a_clear_error(make_bus, tmp_path: Path) -> None:
    bus = await make_bus()
    plain = tmp_path / "plain.gz"
    with gzip.open(plain, "wb") as f:
        f.write(b'{"hello": 1}\n')
    with pytest.raises(BackupError, match="not a swarmbus backup"):
        await import_backup(bus, plain)
    source = await make_bus(namespace="src3-" + tmp_path.name[-8:])
    await fill(source)
    full = tmp_path / "full.gz"
    await export_backup(source, full)
    lines = gzip.open(full).read().splitlines()
    cut = tmp_path / "cut.gz"
    with gzip.open(cut, "wb") as f:
        f.write(b"\n".join(lines[:-5]) + b"\n")
    with pytest.raises(BackupError, match="truncated"):
        await import_backup(await make_bus(namespace="dst3-" + tmp_path.name[-8:]), cut)
    with pytest.raises(BackupError, match="cannot read"):
        await import_backup(bus, tmp_path / "missing.gz")
