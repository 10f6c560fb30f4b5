"""One definition of connection trouble, one loop policy, and loops that survive bugs.

Every long-running loop catches ``Exception`` and hands it to ``faults.ride_out``:
transient trouble backs off with a warning, anything else is logged with its traceback,
and the loop goes on. These tests inject failures into each loop and check that the
process keeps working, and that no module invents its own "connection errors" tuple.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis import exceptions as rexc
from structlog.testing import capture_logs

import swarmbus
from swarmbus import Agent, Context, Signal, StatusState, Worker
from swarmbus.agents import registry
from swarmbus.bus import faults, scripts, tail
from swarmbus.bus.backoff import Backoff, retry_delay
from swarmbus.bus.consume import Delivery
from swarmbus.bus.leases import LeaseKeeper
from swarmbus.coordinator import janitor
from swarmbus.errors import BusConnectionError, BusResponseError
from tests.support import eventually, running

PACKAGE = Path(swarmbus.__file__).parent


@pytest.mark.parametrize("exc", [
    rexc.ConnectionError("Connection refused"),
    rexc.TimeoutError("Timeout reading from socket"),
    ConnectionResetError(104, "reset"),
    TimeoutError(),
    OSError(113, "No route to host"),
    BusConnectionError("cannot reach redis"),
    rexc.BusyLoadingError("Redis is loading the dataset in memory"),
    rexc.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    rexc.OutOfMemoryError("OOM command not allowed"),
    rexc.ResponseError("BUSY Redis is busy running a script. You can only call "
                       "SCRIPT KILL or SHUTDOWN NOSAVE."),
    rexc.ReadOnlyError("You can't write against a read only replica."),
    rexc.ResponseError("READONLY You can't write against a read only replica."),
    rexc.ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data "
                       "is set to 'no'."),
    rexc.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
    rexc.ResponseError("CLUSTERDOWN The cluster is down"),
    rexc.ResponseError("NOREPLICAS Not enough good replicas to write."),
    rexc.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's "
                       "currently unable to persist to disk."),
    rexc.ResponseError("Error running script (call to f_abc): @user_script:12: "
                       "-OOM command not allowed when used memory > 'maxmemory'"),
    rexc.ResponseError("Command # 1 (SISMEMBER ns:{t:JOB}:groups risk) of pipeline caused "
                       "error: ('BUSY Redis is busy running a script.',)"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_transient_trouble_is_ridden_out(exc: BaseException) -> None:
    assert faults.is_transient(exc)
    wrapped = BusResponseError("redis error")
    wrapped.__cause__ = exc
    assert faults.is_transient(wrapped)


@pytest.mark.parametrize("exc", [
    rexc.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    rexc.ResponseError("ERR unknown command 'FOO'"),
    rexc.ResponseError("NOGROUP No such key 'x' or consumer group 'y'"),
    rexc.ResponseError("Command # 2 (XADD ns:{t:BUSY}:stream * -OOM x) of pipeline caused "
                       "error: ('WRONGTYPE Operation against a key',)"),
    rexc.AuthenticationError("invalid username-password pair"),
    rexc.NoPermissionError("NOPERM this user has no permissions to run the 'xadd' command"),
    RuntimeError("a bug of ours"),
    KeyError("x"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_bugs_and_setup_problems_are_not_transient(exc: BaseException) -> None:
    assert not faults.is_transient(exc)


def test_a_wrong_password_wrapped_as_a_connection_error_is_not_an_outage() -> None:
    wrapped = BusConnectionError("cannot reach redis at redis://:***@h:6379/0: invalid password")
    wrapped.__cause__ = rexc.AuthenticationError("invalid password")
    assert not faults.is_connection_error(wrapped)
    assert not faults.is_transient(wrapped)


def test_describe_never_raises() -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    class Weird(Exception):
        def __str__(self) -> Any:
            return 42

    assert faults.describe(Hostile()) == "Hostile"
    assert faults.describe(Weird()) == "Weird"
    assert faults.describe(ValueError("x" * 10_000), 100) == "x" * 97 + "..."


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base=0.1, cap=2.0)
    delays = [backoff.next() for _ in range(200)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 2.0 for d in delays)
    assert min(delays[10:]) >= 1.0  # at the cap, drawn from its upper half
    backoff.reset()
    assert backoff.next() <= 0.1


@pytest.mark.parametrize("attempt", [1, 2, 30, 1024, 1025, 10**6, 10**12])
@pytest.mark.parametrize("base", [0.0, 0.001, 1.0, 60.0])
def test_retry_delay_never_overflows(attempt: int, base: float) -> None:
    delay = retry_delay(base, attempt, 60.0)
    assert math.isfinite(delay) and 0 <= delay <= 60.0


# -- one definition ----------------------------------------------------------------------

_TROUBLE = {"ConnectionError", "TimeoutError"}


def _names(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
    return out


def test_no_module_defines_its_own_connection_errors() -> None:
    """Only ``bus/faults.py`` may name connection errors in an ``except`` or a tuple."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "bus" / "faults.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            caught: ast.AST | None = None
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = node.type
            elif isinstance(node, ast.Tuple) and not isinstance(
                getattr(node, "ctx", None), ast.Store
            ):
                caught = node
            if caught is not None and _names(caught) & _TROUBLE:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == [], "use swarmbus.bus.faults (CONNECTION_ERRORS, is_transient)"


def test_the_check_above_does_find_an_offender(tmp_path: Path) -> None:
    source = "try:\n    pass\nexcept (ConnectionError, OSError):\n    pass\n"
    tree = ast.parse(source)
    handler = next(n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler))
    assert handler.type is not None and _names(handler.type) & _TROUBLE


# -- every loop survives injected trouble --------------------------------------------------


class Flaky:
    """Wrap a coroutine function: the first ``times`` calls raise ``exc``."""

    def __init__(self, func: Any, exc: BaseException, times: int) -> None:
        self.func, self.exc, self.left = func, exc, times

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            raise self.exc
        return await self.func(*args, **kwargs)


@pytest.mark.anyio
@pytest.mark.parametrize("exc", [RuntimeError("injected bug"),
                                 rexc.ConnectionError("injected outage"),
                                 rexc.ResponseError("OOM injected")],
                         ids=["bug", "outage", "oom"])
async def test_consumer_loops_survive_failures_of_every_script_call(
    make_bus, monkeypatch: pytest.MonkeyPatch, exc: BaseException,
) -> None:
    """DELIVER (read loop), FINISH (acks), redelivery (retries): all of them fail a few
    times; the consumer logs, backs off, and handles everything exactly as it should."""
    bus = await make_bus(retry_backoff=0.01)
    attempts: dict[str, int] = {}

    async def handle(signal: Signal, delivery: Delivery) -> None:
        attempts[signal.id] = delivery.attempt
        if delivery.attempt == 1 and signal.data["n"] % 2:
            raise RuntimeError("first attempt fails")

    ids = await bus.publish_many([Signal(type="JOB", source="a", targets=["risk"],
                                         data={"n": n}) for n in range(10)])
    flaky = Flaky(scripts.run_many, exc, 6)
    monkeypatch.setattr(scripts, "run_many", flaky)
    with capture_logs() as logs:
        async with running(bus.consumer("risk", {"JOB": handle})):
            for signal_id in ids:
                status = await bus.wait(signal_id, timeout=20)
                assert status.targets["risk"].state is StatusState.processed
    assert flaky.left == 0
    trouble = [e for e in logs if e["event"].endswith(("_deferred", "_failed"))
               and e["event"] != "handler_failed"]
    assert trouble
    if isinstance(exc, RuntimeError):  # a bug: logged with its traceback
        assert all(e.get("exc_info") is not None for e in trouble)
    else:
        assert all(e["log_level"] == "warning" for e in trouble)


@pytest.mark.anyio
async def test_worker_heartbeats_survive_failures(make_bus, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    bus = await make_bus()
    agent = Agent("risk")

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        return None

    flaky = Flaky(registry.beat, RuntimeError("injected"), 2)
    monkeypatch.setattr("swarmbus.agents.worker.beat", flaky)
    worker = Worker(bus, agent, heartbeat_interval=0.05)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)

            async def beating() -> bool:
                return any(h.alive for h in await registry.heartbeats(bus))

            await eventually(beating, timeout=10)
            status = await bus.wait(await bus.publish(
                Signal(type="JOB", source="a", targets=["risk"])), timeout=10)
            worker.stop()
    assert status.targets["risk"].state is StatusState.processed
    assert [e["event"] for e in logs].count("heartbeat_failed") == 2


@pytest.mark.anyio
async def test_lease_keeper_survives_failures(make_bus, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = await make_bus(claim_idle=0.2)
    real = LeaseKeeper._renew
    failures = {"left": 3}

    def flaky(self: LeaseKeeper, client: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("injected")
        real(self, client)

    monkeypatch.setattr(LeaseKeeper, "_renew", flaky)

    async def handle(signal: Signal, delivery: Delivery) -> None:
        await anyio.sleep(0.8)

    with capture_logs() as logs:
        consumer = bus.consumer("risk", {"JOB": handle})
        async with running(consumer):
            status = await bus.wait(await bus.publish(
                Signal(type="JOB", source="a", targets=["risk"])), timeout=10)
    assert status.targets["risk"].state is StatusState.processed
    assert failures["left"] == 0
    assert consumer.keeper.failures == 3 and consumer.keeper.renewed > 0
    assert any(e["event"] == "lease_renewal_failed" for e in logs)


@pytest.mark.anyio
async def test_coordinator_jobs_survive_a_bug(make_bus, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = await make_bus()
    flaky = Flaky(janitor.sweep, KeyError("injected"), 1)
    monkeypatch.setattr(janitor, "sweep", flaky)
    coordinator = swarmbus.Coordinator(bus, janitor_every=0.05, checkpoint_every=3600,
                                       analytics_every=3600, lease_ttl=0.3)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)

            async def swept() -> bool:
                return any(e["event"] == "janitor_swept" for e in logs)

            await eventually(swept, timeout=10)
            coordinator.stop()
    (failed,) = [e for e in logs if e["event"] == "coordinator_jobs_failed"]
    assert failed["exc_info"] is not None and failed["error_type"] == "KeyError"


@pytest.mark.anyio
async def test_tail_follow_survives_failures_and_resumes_where_it_stopped(
    make_bus, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = await make_bus()
    first = await bus.publish(Signal(type="NEWS", source="a", data={"n": 0}))
    seen: list[int] = []
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            async def follow() -> None:
                async for signal in bus.tail("NEWS", since="0", follow=True):
                    seen.append(signal.data["n"])

            tg.start_soon(follow)
            await eventually(lambda: _true(seen == [0]))
            monkeypatch.setattr(bus.redis, "xread", Flaky(
                bus.redis.xread, rexc.ConnectionError("injected outage"), 3))
            for n in range(1, 4):
                await bus.publish(Signal(type="NEWS", source="a", data={"n": n}))
            await eventually(lambda: _true(len(seen) >= 4))
            tg.cancel_scope.cancel()
    assert seen == [0, 1, 2, 3]  # nothing skipped, nothing twice
    assert [e["event"] for e in logs].count("tail_deferred") == 3
    assert first


async def _true(value: bool) -> bool:
    return value


def test_tail_module_uses_the_policy() -> None:
    assert tail.ride_out is faults.ride_out
