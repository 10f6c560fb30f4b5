"""``swarmbus run`` stopped with SIGTERM while handlers run: finish, ack, leave the rest."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import anyio
import pytest

import swarmbus
from swarmbus import Signal, StatusState
from tests.cli.runner import CLI, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def publish_batch(url: str, namespace: str, count: int, sleep: float) -> list[str]:
    async def go() -> list[str]:
        async with swarmbus.connect(url, namespace=namespace) as bus:
            return await bus.publish_many([
                Signal(type="PING", source="test", targets=["risk"],
                       data={"sleep": sleep, "i": i})
                for i in range(count)
            ])

    return anyio.run(go)


def finished(lines: list[str], word: str) -> set[str]:
    return {line.split()[1] for line in lines if line.startswith(word + " ")}


def test_sigterm_finishes_in_flight_handlers_and_leaves_the_rest(
    cli: CLI, state_of: Callable[[str, str], dict[str, StatusState]]
) -> None:
    url, namespace = cli.env["SWARMBUS_REDIS_URL"], cli.namespace
    worker = cli.worker("--concurrency", "2")
    ids = publish_batch(url, namespace, 6, sleep=1.0)
    worker.expect_out("start")  # a handler is in flight (it sleeps 1 s)
    sent = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - sent < 5, "the worker did not stop within the grace period"
    assert not any("Traceback" in line for line in worker.stderr)

    started, done = finished(worker.stdout, "start"), finished(worker.stdout, "done")
    assert done and started == done, "an in-flight handler was cut short"
    assert len(done) < len(ids), "the worker kept reading after SIGTERM"
    states = {i: state_of("PING", i)["risk"] for i in ids}
    for signal_id, state in states.items():
        if signal_id in done:
            assert state is StatusState.processed, (signal_id, state)
        else:
            assert state in (StatusState.pending, StatusState.delivered), (signal_id, state)

    # What the first worker left is handled by the next one, and nothing twice: entries
    # it read but never started are reclaimed once idle for claim_idle (short here).
    second = cli.worker("--concurrency", "10", SWARMBUS_CLAIM_IDLE="0.3")
    wait_until(lambda: all(state_of("PING", i)["risk"] is StatusState.processed for i in ids),
               timeout=15)
    assert second.stop(signal.SIGTERM) == 0
    assert finished(second.stdout, "done") == set(ids) - done
