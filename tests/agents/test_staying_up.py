"""Staying up (SPEC §12), on real processes and a real redis-server with AOF ``always``.

Workers, the coordinator and ``tail -f`` ride out a frozen then killed Redis; a handler
that blocks the event loop, or a machine whose cores are all busy, never gets a live
handler's signal run twice; a SIGKILLed worker's entries are taken over within
``claim_idle``.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmbus.bus.keys import Keys
from swarmbus.bus.status import StatusState, parse_target
from swarmbus.testing import RedisProcess
from tests.cli.runner import CLI, Proc, cli_env, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.agents.staying_app"


@pytest.fixture
def aof_redis(redis_factory) -> RedisProcess:
    server: RedisProcess = redis_factory(aof=True)
    return server


@pytest.fixture
def fleet(aof_redis: RedisProcess, namespace: str) -> Iterator[CLI]:
    runner = CLI(cli_env(aof_redis.url, namespace), namespace)
    yield runner
    for proc in runner.procs:
        proc.close()


def statuses(client: redis.Redis, keys: Keys, topic: str, ids: list[str]) -> collections.Counter[
        tuple[str, StatusState]]:
    """(target, state) counts over ``ids``, read straight from Redis in chunks."""
    counts: collections.Counter[tuple[str, StatusState]] = collections.Counter()
    tk = keys.topic(topic)
    for start in range(0, len(ids), 1000):
        pipe = client.pipeline(transaction=False)
        for signal_id in ids[start : start + 1000]:
            pipe.hgetall(tk.status(signal_id))
        for raw in pipe.execute():
            for field, value in raw.items():
                if not field.startswith(b"_"):
                    counts[(field.decode(), parse_target(value).state)] += 1
    return counts


def entries(client: redis.Redis, keys: Keys, topic: str) -> list[dict[str, object]]:
    out = []
    for _, fields in client.xrange(keys.topic(topic).stream):
        out.append(json.loads(fields[b"d"]))
    return out


def calls(client: redis.Redis, namespace: str) -> dict[str, int]:
    raw = client.hgetall(f"{namespace}:test:calls")
    return {k.decode(): int(v) for k, v in raw.items()}


def test_a_frozen_then_killed_redis_is_ridden_out_by_every_process(
    fleet: CLI, aof_redis: RedisProcess, namespace: str,
) -> None:
    """2 workers (2 agents), the coordinator, ``tail -f`` and a publisher of 6,000 signals;
    Redis frozen 15 s (SIGSTOP), then SIGKILLed and restarted from its AOF."""
    n = 6000
    tail = fleet.spawn("tail", "-f", "--json")
    coordinator = fleet.spawn("coordinator", "--janitor-every", "5s")
    workers = [fleet.spawn("run", f"{APP}:fleet", SWARMBUS_CLAIM_IDLE="5") for _ in range(2)]
    for proc in [*workers]:
        proc.expect_err("worker_started", timeout=20)
    coordinator.expect_err("coordinator_started", timeout=20)
    publisher = subprocess.Popen(
        [sys.executable, "-m", "tests.agents.publisher_proc", aof_redis.url, namespace,
         str(n), "400"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=fleet.env,
    )
    client = redis.Redis.from_url(aof_redis.url)
    keys = Keys(namespace)
    try:
        wait_until(lambda: client.xlen(keys.topic("ORDER").stream) >= 1500, timeout=30)
        aof_redis.freeze()
        time.sleep(15)
        aof_redis.kill()  # SIGKILL while frozen: no shutdown, no final fsync
        time.sleep(3)  # connections refused meanwhile: every process sees the outage
        aof_redis.start()
        client.close()
        client = redis.Redis.from_url(aof_redis.url)
        assert publisher.wait(120) == 0
        assert publisher.stdout is not None and publisher.stdout.read().strip() == f"published {n}"

        orders = [str(e["id"]) for e in entries(client, keys, "ORDER")]
        assert len(orders) == len(set(orders)) == n

        def all_processed() -> bool:
            done = statuses(client, keys, "ORDER", orders)
            return done[("alpha", StatusState.processed)] == n and \
                done[("beta", StatusState.processed)] == n

        wait_until(all_processed, timeout=120)
        fills = entries(client, keys, "FILL")
        # every FILL published exactly once, one per ORDER, whatever ran twice
        assert len(fills) == n
        assert sorted(str(f["causation_id"]) for f in fills) == sorted(orders)
        fill_ids = [str(f["id"]) for f in fills]
        wait_until(lambda: statuses(client, keys, "FILL", fill_ids)[
            ("beta", StatusState.processed)] == n, timeout=60)

        # tail -f printed every signal exactly once, across the outage
        expected = set(orders) | set(fill_ids)
        printed: collections.Counter[str] = collections.Counter()

        def tail_caught_up() -> bool:
            while not tail.out.empty():
                line = tail.out.get()
                tail.stdout.append(line)
                printed[json.loads(line)["id"]] += 1
            return set(printed) >= expected

        wait_until(tail_caught_up, timeout=60)
        assert max(printed.values()) == 1, [i for i, c in printed.items() if c > 1][:5]
        assert set(printed) == expected

        # and every process is still alive, and stops cleanly when asked
        for proc in [tail, coordinator, *workers]:
            assert proc.popen.poll() is None, f"{proc.args} exited: {proc.stderr[-5:]}"
        for proc in workers:
            assert proc.stop(timeout=30) == 0
        assert coordinator.stop(timeout=30) == 0
        tail.stop(timeout=15)
        for proc in [tail, coordinator, *workers]:
            assert not any("Traceback" in line for line in proc.stderr)
        for proc in [tail, coordinator, *workers]:  # they saw the outage and rode it out
            assert any("_deferred" in line for line in proc.stderr), proc.args
    finally:
        if publisher.poll() is None:
            publisher.kill()
        publisher.wait(5)
        if publisher.stdout is not None:
            publisher.stdout.close()
        client.close()


def blocking_workers(fleet: CLI, app: str, claim_idle: float) -> list[Proc]:
    workers = [fleet.spawn("run", app, SWARMBUS_CLAIM_IDLE=str(claim_idle),
                           SWARMBUS_RETRY_BACKOFF="0.05") for _ in range(2)]
    for proc in workers:
        proc.expect_err("worker_started", timeout=20)
    return workers


@pytest.mark.parametrize("kind", ["async handler blocking the loop", "plain def handler"])
def test_a_handler_blocking_for_longer_than_claim_idle_runs_once(
    fleet: CLI, aof_redis: RedisProcess, namespace: str, kind: str,
) -> None:
    claim_idle = 2.0
    is_sync = kind.startswith("plain")
    app, topic, agent = (f"{APP}:sync", "BLOCKING", "sync") if is_sync else (
        f"{APP}:alpha", "ORDER", "alpha")
    workers = blocking_workers(fleet, app, claim_idle)
    data = json.dumps({"mode": "block", "seconds": claim_idle * 2.5})
    signal_id = fleet.ok("publish", topic, "--to", agent, "--data", data,
                         "--wait", "30").lines[0]
    client = redis.Redis.from_url(aof_redis.url)
    try:
        time.sleep(claim_idle * 1.5)  # give a reclaim pass of the other worker its chance
        assert calls(client, namespace) == {f"{agent}:{signal_id}": 1}
    finally:
        client.close()
    logs = []
    for proc in workers:
        assert proc.stop(timeout=30) == 0
        logs.extend(proc.stderr)
    assert not [line for line in logs if "lease_lost" in line]
    stalls = [json.loads(line) for line in logs if "event_loop_stalled" in line]
    if is_sync:
        assert stalls == []  # the thread blocks, the event loop does not
    else:  # the stall is reported, naming the handler and the signal
        assert stalls and stalls[0]["handler"] == "order"
        assert stalls[0]["signal_id"] == signal_id and stalls[0]["topic"] == "ORDER"


def test_busy_cores_never_get_a_live_handler_stolen(
    fleet: CLI, aof_redis: RedisProcess, namespace: str,
) -> None:
    """Both cores kept busy by other processes while two workers run 4 s handlers with
    ``claim_idle=1``: one call per signal."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2 * (os.cpu_count() or 2))]
    client = redis.Redis.from_url(aof_redis.url)
    try:
        workers = blocking_workers(fleet, f"{APP}:alpha", 1.0)
        data = json.dumps({"mode": "sleep", "seconds": 4})
        ids = [fleet.ok("publish", "ORDER", "--to", "alpha", "--data", data).lines[0]
               for _ in range(6)]
        keys = Keys(namespace)
        wait_until(lambda: statuses(client, keys, "ORDER", ids)[
            ("alpha", StatusState.processed)] == 6, timeout=60)
        assert calls(client, namespace) == {f"alpha:{i}": 1 for i in ids}
        logs = []
        for proc in workers:
            proc.stop(timeout=30)
            logs.extend(proc.stderr)
        assert not [line for line in logs if "lease_lost" in line]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(5)
        client.close()


def test_a_sigkilled_workers_entries_are_taken_over_within_claim_idle(
    fleet: CLI, aof_redis: RedisProcess, namespace: str,
) -> None:
    claim_idle = 2.0
    victim, survivor = blocking_workers(fleet, f"{APP}:alpha", claim_idle)
    client = redis.Redis.from_url(aof_redis.url)
    keys = Keys(namespace)
    try:
        data = json.dumps({"mode": "sleep", "seconds": 30})
        ids = [fleet.ok("publish", "ORDER", "--to", "alpha", "--data", data).lines[0]
               for _ in range(4)]

        def held_by_both() -> bool:
            return len(calls(client, namespace)) == 4

        wait_until(held_by_both, timeout=20)
        tk = keys.topic("ORDER")
        pending = client.xpending_range(tk.stream, "alpha", "-", "+", 10)
        victim_name = next(line for line in victim.stderr if "worker_started" in line)
        owners = collections.Counter(p["consumer"].decode() for p in pending)
        assert len(owners) == 2, owners  # both workers hold some
        killed_at = time.monotonic()
        victim.popen.kill()
        victim.popen.wait(5)
        name = json.loads(victim_name)["worker"]
        orphaned = owners[name]

        def taken_over() -> bool:
            rows = client.xpending_range(tk.stream, "alpha", "-", "+", 10)
            return all(r["consumer"].decode() != name for r in rows) and sum(
                calls(client, namespace).values()) == 4 + orphaned

        wait_until(taken_over, timeout=claim_idle * 5)
        takeover = time.monotonic() - killed_at
        print(f"\ntakeover of {orphaned} entries {takeover:.2f} s after SIGKILL "
              f"(claim_idle={claim_idle} s)")
        assert takeover < claim_idle * 3  # idle clock + at most one reclaim pass + slack
        survivor.stop(sig=9)
        assert set(ids) == {k.split(":", 1)[1] for k in calls(client, namespace)}
    finally:
        client.close()
