"""Handler kinds and limits: plain ``def`` handlers in worker threads, ``handler_timeout``."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from swarmbus import Agent, Context, HandlerTimeout, Signal, StatusState, Worker

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()


def job(**data: object) -> Signal:
    return Signal(type="JOB", source="desk", targets=["risk"], data=data)


async def test_def_handlers_run_in_threads_bounded_by_concurrency(make_bus) -> None:
    bus = await make_bus()
    agent = Agent("risk")
    loop_thread = threading.get_ident()
    lock = threading.Lock()
    state = {"now": 0, "most": 0}
    threads: set[int] = set()

    @agent.on("JOB")
    def handle(signal: Signal, ctx: Context) -> None:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            threads.add(threading.get_ident())
        time.sleep(0.2)  # blocking is fine here: this is a worker thread
        ctx.call(ctx.publish, "DONE", targets=["audit"], data={"n": signal.data["n"]})
        with lock:
            state["now"] -= 1

    async with serving(Worker(bus, agent, concurrency=2)):
        ids = await bus.publish_many([job(n=n) for n in range(6)])
        for signal_id in ids:
            status = await bus.wait(signal_id, timeout=10)
            assert status.targets["risk"].state is StatusState.processed
    assert state["most"] == 2  # never more than the worker's concurrency
    assert loop_thread not in threads
    done = sorted([s.data["n"] async for s in bus.tail("DONE")])
    assert done == list(range(6))  # ctx.call ran the coroutine on the loop, once each


async def test_ctx_call_from_the_event_loop_is_a_clear_error(make_bus) -> None:
    bus = await make_bus(max_attempts=1)
    agent = Agent("risk")
    errors: list[str] = []

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        try:
            ctx.call(ctx.publish, "X")
        except RuntimeError as exc:
            errors.append(str(exc))

    async with serving(Worker(bus, agent)):
        await bus.wait(await bus.publish(job()), timeout=10)
    assert errors and "worker thread" in errors[0]


async def test_an_async_handler_past_handler_timeout_is_cancelled_and_retried(make_bus
                                                                             ) -> None:
    bus = await make_bus(handler_timeout=0.2, max_attempts=3, retry_backoff=0.01)
    agent = Agent("risk")
    attempts: list[int] = []
    cancelled: list[int] = []
    finished: list[int] = []

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        try:
            await anyio.sleep(30)
            finished.append(ctx.attempt)
        except anyio.get_cancelled_exc_class():
            cancelled.append(ctx.attempt)
            raise

    async with serving(Worker(bus, agent)):
        started = time.monotonic()
        status = await bus.wait(await bus.publish(job()), timeout=15)
        took = time.monotonic() - started
    target = status.targets["risk"]
    assert (target.state, target.attempts) == (StatusState.failed, 3)
    assert target.error is not None and target.error.startswith("HandlerTimeout: ")
    assert attempts == cancelled == [1, 2, 3] and finished == []
    assert took < 10  # cancelled at the deadline, not after 30 s
    (letter,) = await bus.dead_letters("JOB")
    assert (letter.error_type, letter.attempts) == ("HandlerTimeout", 3)


async def test_a_handler_that_finishes_in_time_is_not_affected(make_bus) -> None:
    bus = await make_bus(handler_timeout=1.0)
    agent = Agent("risk")

    @agent.on("JOB")
    async def handle(signal: Signal, ctx: Context) -> None:
        await anyio.sleep(0.05)

    async with serving(Worker(bus, agent)):
        status = await bus.wait(await bus.publish(job()), timeout=10)
    assert (status.targets["risk"].state, status.targets["risk"].attempts) == (
        StatusState.processed, 1)


async def test_a_def_handler_past_handler_timeout_counts_as_a_failed_attempt(make_bus) -> None:
    """A thread cannot be interrupted: the attempt runs to its end, then counts as failed."""
    bus = await make_bus(handler_timeout=0.2, max_attempts=2, retry_backoff=0.01)
    agent = Agent("risk")
    runs: list[int] = []

    @agent.on("JOB")
    def handle(signal: Signal, ctx: Context) -> None:
        runs.append(ctx.attempt)
        time.sleep(0.4 if ctx.attempt == 1 else 0.0)

    async with serving(Worker(bus, agent)):
        status = await bus.wait(await bus.publish(job()), timeout=10)
    assert runs == [1, 2]
    assert (status.targets["risk"].state, status.targets["risk"].attempts) == (
        StatusState.processed, 2)


def test_handler_timeout_is_a_timeout_error() -> None:
    assert issubclass(HandlerTimeout, TimeoutError)
    assert "0.5 s" in str(HandlerTimeout(0.5))
