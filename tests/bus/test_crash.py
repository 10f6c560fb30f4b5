"""Fault injection on a private redis-server: SIGKILLed consumers, a killed Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import swarmbus
from swarmbus import Signal, StatusState
from swarmbus.bus.consume import Delivery
from swarmbus.testing import RedisProcess
from tests.support import eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, url: str, namespace: str, agent: str, *extra: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.bus.consumer_proc", url, namespace, agent, *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        assert line.startswith("ready"), f"consumer process did not start: {line!r}"
        self.name = line.split()[1]

    def kill(self) -> None:
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.close()


async def states(bus: swarmbus.Bus, ids: list[str]) -> dict[str, int]:
    """How many (signal, target) pairs are in each state; pipelined in chunks."""
    tk = bus.keys.topic("LOAD")
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        async with bus.redis.pipeline(transaction=False) as pipe:
            for signal_id in ids[start : start + 1000]:
                pipe.hgetall(tk.status(signal_id))
            for raw in await pipe.execute():
                for field, value in raw.items():
                    if field != b"_e":
                        state = {"p": "pending", "d": "delivered", "s": "processed",
                                 "f": "failed", "x": "expired"}[value.decode()[0]]
                        counts[state] = counts.get(state, 0) + 1
    return counts


async def test_sigkill_of_one_consumer_per_target_loses_nothing(
    redis_server: RedisProcess, namespace: str, procs: list[Proc]
) -> None:
    url = redis_server.url
    for agent in ("risk", "exec"):
        for _ in range(2):
            procs.append(Proc(url, namespace, agent, "--claim-idle", "1", "--delay", "0.001"))
    victims = [procs[0], procs[2]]
    async with swarmbus.connect(url, namespace=namespace) as bus:
        ids: list[str] = []
        for start in range(0, 10_000, 500):
            batch = [Signal(type="LOAD", source="producer", targets=["risk", "exec"],
                            data={"n": n}) for n in range(start, start + 500)]
            ids += await bus.publish_many(batch)
            if start == 2_000:
                # mid-run: both victims are holding in-flight entries right now
                await eventually(lambda: _handled_by(bus, namespace, victims))
                for victim in victims:
                    victim.kill()
        assert len(set(ids)) == 10_000

        async def all_done() -> bool:
            return (await states(bus, ids)).get("processed", 0) == 20_000

        await eventually(all_done, timeout=90, interval=0.5)
        counts = await states(bus, ids)
        assert counts == {"processed": 20_000}
        handled = await bus.redis.hgetall(f"{namespace}:test:handled")
        per_consumer = {k.decode(): int(v) for k, v in handled.items()}
        # every pair ran at least once; the victims' unacked work ran again elsewhere
        assert sum(per_consumer.values()) >= 20_000
        assert all(per_consumer.get(v.name, 0) > 0 for v in victims)
        for group in await bus.groups("LOAD"):
            assert group.pending == 0, group
    for p in procs[1::2]:
        assert p.stop() == 0


async def _handled_by(bus: swarmbus.Bus, namespace: str, victims: list[Proc]) -> bool:
    handled = await bus.redis.hgetall(f"{namespace}:test:handled")
    return all(int(handled.get(v.name.encode(), 0)) >= 100 for v in victims)


async def test_worker_crash_loop_ends_in_dead_letter_after_max_attempts(
    redis_server: RedisProcess, namespace: str, procs: list[Proc]
) -> None:
    """A signal that kills its worker every time is dead-lettered, not retried forever."""
    url = redis_server.url
    async with swarmbus.connect(url, namespace=namespace) as bus:
        poison = await bus.publish(Signal(type="LOAD", source="producer", targets=["risk"],
                                          data={"crash": True}))
        crashes = 0
        for _ in range(3):  # max_attempts=3 deliveries, each one kills a process
            proc = Proc(url, namespace, "risk", "--claim-idle", "0.3", "--max-attempts", "3")
            procs.append(proc)
            proc.popen.wait(20)
            assert proc.popen.returncode == 17
            crashes += 1
        survivor = Proc(url, namespace, "risk", "--claim-idle", "0.3", "--max-attempts", "3")
        procs.append(survivor)
        status = await bus.wait(poison, timeout=20)
        assert survivor.stop() == 0
    target = status.targets["risk"]
    assert crashes == 3
    assert target.state is StatusState.failed
    assert "MaxAttemptsExceeded" in (target.error or "")
    assert target.attempts == 4  # the survivor's delivery is the one that gave up
    (letter,) = await _dead(url, namespace)
    assert letter.signal is not None and letter.signal.id == poison


async def _dead(url: str, namespace: str) -> list[swarmbus.DeadLetter]:
    async with swarmbus.connect(url, namespace=namespace) as bus:
        return await bus.dead_letters("LOAD")


async def test_redis_killed_and_restarted_with_aof_mid_run(redis_factory, namespace) -> None:
    server: RedisProcess = redis_factory(aof=True)
    handled: list[str] = []

    async with swarmbus.connect(server.url, namespace=namespace, claim_idle=2,
                                block_timeout=0.5) as bus:

        async def handle(signal: Signal, delivery: Delivery) -> None:
            await anyio.sleep(0.002)
            handled.append(signal.id)

        consumer = bus.consumer("risk", {"LOAD": handle}, concurrency=16)
        async with running(consumer):
            ids = await bus.publish_many(
                [Signal(type="LOAD", source="producer", targets=["risk"], data={"n": n})
                 for n in range(1000)]
            )
            await eventually(lambda: _async(len(handled) > 100))
            server.kill()
            await anyio.sleep(0.5)
            server.start()
            # the producer retries on connection errors; the publish is idempotent
            more = [Signal(type="LOAD", source="producer", targets=["risk"], data={"n": n})
                    for n in range(1000, 1500)]
            for _ in range(50):
                try:
                    ids += await bus.publish_many(more)
                    break
                except swarmbus.BusConnectionError:
                    await anyio.sleep(0.1)

            async def done() -> bool:
                return (await states(bus, ids)).get("processed", 0) == len(ids)

            await eventually(done, timeout=60, interval=0.2)
        assert consumer.stats.reconnects >= 1
        assert len(set(ids)) == 1500
        assert set(handled) == set(ids)


async def _async(value: object) -> object:
    return value
