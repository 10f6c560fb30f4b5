"""memory, coordinator, stats, backup and agents' held work, against the private redis-server.

Data is seeded through the library in this process; every command runs as a user runs it,
and its output is compared with what the library returns for the same query.
"""

from __future__ import annotations

import gzip
import random
import re
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import redis

import swarmbus
from swarmbus.bus.keys import Keys
from swarmbus.coordinator import Anomaly
from swarmbus.coordinator.analytics import report
from swarmbus.coordinator.consolidation import consolidate, ensure_group
from tests.cli.runner import CLI, Result, one_error_line, wait_until

pytestmark = pytest.mark.redis

T = TypeVar("T")
AGENT = "risk"


def on_bus(cli: CLI, func: Callable[[swarmbus.Bus], Awaitable[T]]) -> T:
    """Run ``func(bus)`` on the CLI's Redis and namespace, in this process."""

    async def go() -> T:
        async with swarmbus.connect(cli.env["SWARMBUS_REDIS_URL"],
                                    namespace=cli.namespace) as bus:
            return await func(bus)

    return anyio.run(go)


def dumps(values: list[Any]) -> list[dict[str, Any]]:
    return [v.model_dump(mode="json") for v in values]


async def decide_some(bus: swarmbus.Bus, *, consolidated: bool) -> dict[str, str]:
    """A chain root -> child -> grandchild, 16 more decisions, one without an outcome."""
    await bus.redis.set(bus.keys.memory(AGENT).profile, b'{"features": ["market.trend"]}')
    memory = bus.memory(AGENT)
    rng = random.Random(7)
    root = await memory.decide("RISK_ASSESSMENT", context={"market": {"trend": "up"}},
                               reasoning={"selected": ["hedge"], "confidence": 0.8})
    await root.outcome(success=True, quality_score=0.9, latency_ms=12.5)
    child = await memory.decide("TRADE_EXECUTION", context={"market": {"trend": "up"}},
                                reasoning={"selected": ["buy"], "confidence": 0.6},
                                parent_decision_id=root.id)
    await child.outcome(success=False, quality_score=0.2, latency_ms=40.0, errors=["slippage"])
    grandchild = await memory.decide("TRADE_EXECUTION", context={"market": {"trend": "up"}},
                                     reasoning={"selected": ["sell"]}, parent_decision_id=child.id)
    for _ in range(16):
        handle = await memory.decide(
            "RISK_ASSESSMENT", context={"market": {"trend": rng.choice(["up", "down"])}},
            reasoning={"selected": [rng.choice(["hedge", "hold"])], "confidence": rng.random()},
        )
        await handle.outcome(success=rng.random() < 0.7, quality_score=rng.random(),
                             latency_ms=rng.uniform(1, 50))
    if consolidated:
        await ensure_group(bus, AGENT)
        while await consolidate(bus, AGENT, "test"):
            pass
    return {"root": root.id, "child": child.id, "grandchild": grandchild.id}


async def set_states(bus: swarmbus.Bus) -> None:
    state = bus.memory(AGENT).state
    for n in range(3):
        await state.set({"n": n, "limits": {"usd": 1000 * n}})
        await state.checkpoint(f"c{n}")
    await state.set({"n": 99})


def rows(result: Result) -> list[list[str]]:
    """Table lines split on runs of two or more spaces (cells may hold single spaces)."""
    return [re.split(r" {2,}", line.strip()) for line in result.lines if line]


def test_memory_decisions_list_one_and_chain(cli: CLI) -> None:
    ids = on_bus(cli, lambda bus: decide_some(bus, consolidated=False))

    def memory(bus: swarmbus.Bus) -> Any:
        return bus.memory(AGENT)

    def library(**kw: Any) -> list[dict[str, Any]]:
        async def go(bus: swarmbus.Bus) -> list[Any]:
            return await memory(bus).decisions(**kw)

        return dumps(on_bus(cli, go))

    def decisions(*args: str) -> list[dict[str, Any]]:
        return cli.ok("memory", "decisions", "--agent", AGENT, *args, "--json").json_lines()

    everything = decisions("--limit", "100")
    assert len(everything) == 19 and everything == library(limit=100)
    assert decisions() == library()  # newest first, default limit
    assert decisions("--type", "TRADE_EXECUTION") == library(decision_type="TRADE_EXECUTION")
    assert [d["id"] for d in decisions("--type", "TRADE_EXECUTION")] == [ids["grandchild"],
                                                                         ids["child"]]
    assert decisions("--success") == library(success=True)
    assert decisions("--failed", "--limit", "3") == library(success=False, limit=3)
    assert decisions("--since", "1h") == everything
    assert decisions("--until", "1h") == []
    assert decisions("--since", datetime.now(UTC).replace(year=2100).isoformat()) == []

    human = rows(cli.ok("memory", "decisions", "--agent", AGENT, "--limit", "100"))
    assert human[0][:6] == ["ID", "TYPE", "CREATED", "SELECTED", "CONF", "OUTCOME"]
    assert [r[0] for r in human[1:]] == [d["id"] for d in everything]
    by_id = {r[0]: r for r in human[1:]}
    assert by_id[ids["child"]][3:8] == ["buy", "0.60", "failed", "0.20", "40.0ms"]
    assert by_id[ids["grandchild"]][3:6] == ["sell", "-", "-"]  # no confidence, no outcome

    [one] = decisions("--id", ids["child"])
    assert one == on_bus(cli, lambda bus: memory(bus).decision(ids["child"])).model_dump(
        mode="json")
    shown = cli.ok("memory", "decisions", "--agent", AGENT, "--id", ids["child"]).stdout
    for text in (f"parent:     {ids['root']}", "outcome:    failed", "errors:     slippage",
                 "conditions: market.trend=up", '"selected": [\n    "buy"\n  ]'):
        assert text in shown

    chain = decisions("--chain", ids["child"])
    assert chain == dumps(on_bus(cli, lambda bus: memory(bus).chain(ids["child"])))
    assert [d["id"] for d in chain] == [ids["root"], ids["child"], ids["grandchild"]]
    table = rows(cli.ok("memory", "decisions", "--agent", AGENT, "--chain", ids["child"]))
    assert [(r[0], r[1], r[-1]) for r in table] == [
        ("ROLE", "ID", "PARENT"), ("ancestor", ids["root"], "-"),
        ("> this", ids["child"], ids["root"]), ("descendant", ids["grandchild"], ids["child"]),
    ]

    missing = cli("memory", "decisions", "--agent", AGENT, "--id", f"{AGENT}~NOPE")
    assert missing.returncode == 1
    assert f"unknown decision '{AGENT}~NOPE'" in one_error_line(missing)
    nobody = cli.ok("memory", "decisions", "--agent", "nobody", "--failed")
    assert nobody.stdout == ""
    assert nobody.stderr == "no decisions of 'nobody' matching the filters\n"


def test_memory_patterns_and_stats(cli: CLI) -> None:
    on_bus(cli, lambda bus: decide_some(bus, consolidated=True))

    def library(**kw: Any) -> list[dict[str, Any]]:
        return dumps(on_bus(cli, lambda bus: bus.memory(AGENT).patterns(**kw)))

    def patterns(*args: str) -> list[dict[str, Any]]:
        return cli.ok("memory", "patterns", "--agent", AGENT, *args, "--json").json_lines()

    found = patterns()
    assert found == library() and len(found) == 5
    assert sum(p["sample_size"] for p in found) == 18  # every outcome folded once
    assert patterns("--type", "TRADE_EXECUTION") == library(decision_type="TRADE_EXECUTION")
    assert patterns("--min-confidence", "0.3") == library(min_confidence=0.3)
    assert patterns("--limit", "2", "--shared") == library(limit=2, include_shared=True)
    assert patterns("--id", found[-1]["id"]) == [found[-1]]

    table = rows(cli.ok("memory", "patterns", "--agent", AGENT))
    assert table[0] == ["ID", "TYPE", "CONFIDENCE", "STATUS", "SAMPLES", "SUCCESS", "QUALITY",
                        "DESCRIPTION"]
    for row, p in zip(table[1:], found, strict=True):
        assert row[0] == p["id"] and row[2] == f"{p['confidence']:.3f}"
        assert row[3] == p["status"] and row[4] == str(p["sample_size"])
        assert row[-1] == p["description"]
    shown = cli.ok("memory", "patterns", "--agent", AGENT, "--id", found[0]["id"]).stdout
    assert f"description: {found[0]['description']}\n" in shown

    def library_stats(**kw: Any) -> dict[str, Any]:
        stats = on_bus(cli, lambda bus: bus.memory(AGENT).stats(**kw))
        return stats.model_dump(mode="json", exclude={"window_start"})

    def stats(*args: str) -> list[dict[str, Any]]:
        out = cli.ok("memory", "stats", "--agent", AGENT, *args, "--json").json_lines()
        return [{k: v for k, v in s.items() if k != "window_start"} for s in out]

    overall, risk, trade = stats()
    assert overall == library_stats() and overall["count"] == 19
    assert risk == library_stats(decision_type="RISK_ASSESSMENT")
    assert trade == library_stats(decision_type="TRADE_EXECUTION")
    assert (trade["count"], trade["outcomes"], trade["success_rate"]) == (2, 1, 0.0)
    assert stats("--window", "10m", "--type", "TRADE_EXECUTION") == [
        library_stats(window=600, decision_type="TRADE_EXECUTION")]
    table = rows(cli.ok("memory", "stats", "--agent", AGENT, "--window", "1h"))
    assert table[0][:5] == ["TYPE", "SINCE", "DECISIONS", "OUTCOMES", "SUCCESS"]
    assert [r[0] for r in table[1:]] == ["*", "RISK_ASSESSMENT", "TRADE_EXECUTION"]
    assert table[3][2:5] == ["2", "1", "0.0%"]


def test_memory_state_checkpoints_rollback(cli: CLI) -> None:
    on_bus(cli, set_states)
    state = on_bus(cli, lambda bus: bus.memory(AGENT).state.get())
    kept = on_bus(cli, lambda bus: bus.memory(AGENT).state.checkpoints())

    assert cli.ok("memory", "state", "--agent", AGENT, "--json").json_lines() == [
        state.model_dump(mode="json")]
    human = cli.ok("memory", "state", "--agent", AGENT).lines
    assert human[:2] == [f"agent:      {AGENT}", "version:    4"]
    assert human[2].startswith("updated at: ") and human[2].endswith("Z")
    assert human[3:] == ["data:", "{", '  "n": 99', "}"]

    listed = cli.ok("memory", "checkpoints", "--agent", AGENT, "--json").json_lines()
    assert listed == dumps(kept) and [c["label"] for c in listed] == ["c2", "c1", "c0"]
    table = rows(cli.ok("memory", "checkpoints", "--agent", AGENT))
    assert table[0] == ["ID", "LABEL", "VERSION", "CREATED", "DATA"]
    assert [r[:3] for r in table[1:]] == [[c.id, c.label, str(c.version)] for c in kept]

    latest = cli.ok("memory", "rollback", "--agent", AGENT)
    assert latest.lines == [f"rolled back {AGENT} to checkpoint {kept[0].id} (c2, version 3): "
                            "state is now version 5"]
    [restored] = cli.ok("memory", "rollback", "--agent", AGENT, "--checkpoint", kept[2].id,
                        "--json").json_lines()
    now = on_bus(cli, lambda bus: bus.memory(AGENT).state.get())
    assert restored == now.model_dump(mode="json")
    assert (now.version, now.data) == (6, {"n": 0, "limits": {"usd": 0}})

    unknown = cli("memory", "rollback", "--agent", AGENT, "--checkpoint", "NOPE")
    assert unknown.returncode == 1
    assert "unknown checkpoint 'NOPE'" in one_error_line(unknown)
    none = cli("memory", "rollback", "--agent", "nobody")
    assert none.returncode == 1 and "has no checkpoint" in one_error_line(none)
    empty = cli.ok("memory", "checkpoints", "--agent", "nobody")
    assert empty.stdout == "" and empty.stderr == "agent 'nobody' has no checkpoints\n"


def test_coordinator_consolidates_and_stops_on_sigterm(cli: CLI) -> None:
    on_bus(cli, lambda bus: decide_some(bus, consolidated=False))
    assert cli.ok("memory", "patterns", "--agent", AGENT, "--json").stdout == ""
    coordinator = cli.spawn("coordinator", "--checkpoint-every", "1h", "--janitor-every", "1h",
                            "--analytics-every", "1s", "--name", "cli-test")
    coordinator.expect_err("coordinator_started", timeout=15)

    def learned() -> list[dict[str, Any]]:
        found = cli.ok("memory", "patterns", "--agent", AGENT, "--json").json_lines()
        return found if sum(p["sample_size"] for p in found) == 18 else []

    patterns = wait_until(learned, timeout=15)
    assert patterns == dumps(on_bus(cli, lambda bus: bus.memory(AGENT).patterns()))
    assert coordinator.stop(signal.SIGTERM) == 0
    assert coordinator.stdout == []
    assert any("coordinator_stopping" in line for line in coordinator.stderr)
    assert "coordinator_stopped" in coordinator.stderr[-1]
    assert not any("Traceback" in line for line in coordinator.stderr)


def test_stats_rows_and_anomalies(cli: CLI, rclient: redis.Redis) -> None:
    on_bus(cli, lambda bus: decide_some(bus, consolidated=False))
    anomaly = Anomaly(agent=AGENT, metric="decision_quality", value=0.1, mean=0.8, std=0.05,
                      z=-14.0, at=datetime.now(UTC))
    rclient.xadd(Keys(cli.namespace).anomalies, {"a": anomaly.model_dump_json()})

    lines = cli.ok("stats", "--json").json_lines()
    stats = [line for line in lines if "kind" not in line]
    expected = on_bus(cli, lambda bus: report(bus, [AGENT], window=3600.0))
    assert stats == dumps(expected)
    assert [(s["agent"], s["decision_type"], s["decisions"]) for s in stats] == [
        (AGENT, None, 19), (AGENT, "RISK_ASSESSMENT", 17), (AGENT, "TRADE_EXECUTION", 2)]
    assert lines[len(stats):] == [{"kind": "anomaly", **anomaly.model_dump(mode="json")}]
    assert cli.ok("stats", "--agent", AGENT, "--window", "24h", "--json").lines[:1] == [
        cli.ok("stats", "--window", "24h", "--json").lines[0]]
    assert cli.ok("stats", "--agent", "nobody", "--json").json_lines() == [
        dumps(on_bus(cli, lambda bus: report(bus, ["nobody"])))[0]]  # no anomalies of nobody

    human = cli.ok("stats").stdout.split("\n\n")
    table = [re.split(r" {2,}", line) for line in human[0].splitlines()]
    assert table[0] == ["AGENT", "TYPE", "DECISIONS", "SUCCESS", "QUALITY", "P50 MS", "P95 MS",
                        "THROUGHPUT/S"]
    assert [r[:3] for r in table[1:]] == [[AGENT, "*", "19"], [AGENT, "RISK_ASSESSMENT", "17"],
                                          [AGENT, "TRADE_EXECUTION", "2"]]
    anomalies = human[1].splitlines()
    assert anomalies[0].split()[:4] == ["ANOMALY", "AT", "AGENT", "METRIC"]
    assert anomalies[1].split()[2:4] == [AGENT, "decision_quality"]


def test_backup_export_import_round_trip(cli: CLI, tmp_path: Path) -> None:
    on_bus(cli, lambda bus: decide_some(bus, consolidated=True))
    on_bus(cli, set_states)
    path = tmp_path / "memory.jsonl.gz"
    exported = cli.ok("backup", "export", str(path))
    with gzip.open(path) as f:
        count = sum(1 for _ in f) - 2  # header and end record
    assert exported.lines == [f"exported {count} records to {path}"]
    assert exported.stderr == ""  # no progress in a pipe

    target = CLI({**cli.env, "SWARMBUS_NAMESPACE": cli.namespace + "-copy"},
                 cli.namespace + "-copy")
    assert target.ok("backup", "import", str(path)).lines == [
        f"imported {count} records from {path}"]
    for query in (["decisions", "--limit", "100"], ["patterns"], ["state"], ["checkpoints"],
                  ["decisions", "--failed"]):
        args = ["memory", *query, "--agent", AGENT, "--json"]
        assert target.ok(*args).stdout == cli.ok(*args).stdout, query

    again = target("backup", "import", str(path))
    assert again.returncode == 1
    assert f"namespace '{target.namespace}' is not empty" in one_error_line(again)
    assert target.ok("backup", "import", str(path), "--merge").lines == [
        f"imported {count} records from {path}"]

    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b'{"format": "something-else"}\n'))
    fresh = CLI({**cli.env, "SWARMBUS_NAMESPACE": cli.namespace + "-x"}, cli.namespace + "-x")
    result = fresh("backup", "import", str(bad))
    assert result.returncode == 1 and "not a swarmbus backup" in one_error_line(result)
    missing = fresh("backup", "import", str(tmp_path / "nope.gz"))
    assert missing.returncode == 1 and "cannot read backup" in one_error_line(missing)
    unwritable = cli("backup", "export", str(tmp_path / "no" / "dir.gz"))
    assert unwritable.returncode == 1
    assert "cannot write" in one_error_line(unwritable)


def test_agents_lists_work_held_by_dead_consumers(cli: CLI, rclient: redis.Redis) -> None:
    cli.ok("publish", "PING", "--to", "ghost")
    cli.ok("publish", "PING", "--to", "ghost")
    stream = Keys(cli.namespace).topic("PING").stream
    rclient.xreadgroup("ghost", "ghost:gone-host:1", {stream: ">"})  # then never acks or beats

    [held] = cli.ok("agents", "--json").json_lines()
    assert held["kind"] == "held" and held["alive"] is False
    assert (held["topic"], held["agent"], held["consumer"], held["pending"]) == (
        "PING", "ghost", "ghost:gone-host:1", 2)
    assert datetime.fromisoformat(held["oldest_since"]) <= datetime.now(UTC)

    human = cli.ok("agents")
    assert "no consumers seen" in human.stderr
    table = rows(human)
    assert table[0] == ["HELD ON TOPIC", "AGENT", "DEAD CONSUMER", "PENDING", "OLDEST SINCE"]
    assert table[1][:4] == ["PING", "ghost", "ghost:gone-host:1", "2"]

    worker = cli.worker()  # a live consumer: its row first, then the held work below
    beats = cli.ok("agents", "--json").json_lines()
    assert [b.get("kind") for b in beats] == [None, "held"] and beats[0]["alive"] is True
    both = cli.ok("agents").stdout.split("\n\n")
    assert both[0].startswith("AGENT ") and both[1].startswith("HELD ON TOPIC ")
    assert worker.stop(signal.SIGTERM) == 0
