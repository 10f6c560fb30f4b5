"""Hostile handlers and hostile inputs, drawn by hypothesis (the class, not the instances).

Handlers raise anything (exceptions with any text or a ``__str__`` that raises,
``CancelledError`` from a future something else cancelled, ``KeyboardInterrupt``,
``SystemExit`` and other ``BaseException``s), ask for ``Retry`` with any float, ``Reject``
with any text of any length, or return odd values. Streams also carry garbage written with
plain XADDs: any fields, any ids. Whatever happens:

- the consumer stays alive until it is stopped;
- every signal ends in exactly one terminal state for its target, with its ack (nothing
  left pending), and ``status()`` always parses;
- no handler runs twice at once, and none more than ``max_attempts`` times;
- every failed signal and every garbage entry is dead-lettered exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import math
import uuid
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import swarmbus
from swarmbus import Reject, Retry, Signal, StatusState
from swarmbus.bus.consume import Delivery
from swarmbus.bus.signal import SIGNAL_ID
from swarmbus.testing import RedisProcess
from tests.support import eventually

MAX_ATTEMPTS = 3
TTL = 2.0


class HostileStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


class NotAnError(BaseException):
    """A ``BaseException`` that is neither cancellation nor a standard one."""


def _cancelled_future() -> Any:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.cancel)  # as an asyncio client's own timeout does
        await future

    return go


ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=3000)

#: One attempt of a handler: what it does.
ACTIONS = st.one_of(
    st.tuples(st.just("return"), st.sampled_from([None, 42, "a,b c", "ok~id", object()])),
    st.tuples(st.just("raise"), ANY_TEXT.map(RuntimeError)),
    st.tuples(st.just("raise"), st.just(HostileStr())),
    st.tuples(st.just("raise"), st.sampled_from([KeyboardInterrupt(), SystemExit(3),
                                                 NotAnError("x"), GeneratorExit(),
                                                 asyncio.CancelledError()])),
    st.tuples(st.just("cancelled"), st.just(None)),
    st.tuples(st.just("retry"), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("reject"), st.one_of(ANY_TEXT, st.text(min_size=5000, max_size=20_000))),
)

JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=50)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10,
)

#: Other targets of a signal besides "risk": none, a few odd names, or thousands (Lua's
#: ``unpack`` limit is near 8,000 values).
OTHERS = st.one_of(
    st.lists(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True), max_size=5),
    st.sampled_from([4_000, 20_000]).map(lambda n: [f"agent-{i}" for i in range(n)]),
)

SIGNALS = st.lists(
    st.tuples(
        st.from_regex(SIGNAL_ID, fullmatch=True),
        st.dictionaries(st.text(max_size=20), JSONISH, max_size=4),
        st.lists(ACTIONS, min_size=1, max_size=MAX_ATTEMPTS),
        OTHERS,
    ),
    min_size=1, max_size=6, unique_by=lambda s: s[0],
)

GARBAGE = st.lists(
    st.dictionaries(st.binary(min_size=1, max_size=12), st.binary(max_size=40),
                    min_size=1, max_size=6)
    | st.builds(lambda i, d: {b"v": b"1", b"i": i, b"d": d},
                st.binary(max_size=200), st.binary(max_size=100)),
    max_size=4,
)


async def check(url: str, signals: list[Any], garbage: list[dict[bytes, bytes]]) -> None:
    namespace = "h" + uuid.uuid4().hex[:10]
    async with swarmbus.connect(url, namespace=namespace, max_attempts=MAX_ATTEMPTS,
                                retry_backoff=0.01, claim_idle=1.0) as bus:
        plans: dict[str, list[tuple[str, Any]]] = {}
        calls: collections.Counter[str] = collections.Counter()
        running_now: set[str] = set()
        overlaps: list[str] = []

        async def handle(signal: Signal, delivery: Delivery) -> Any:
            if signal.id in running_now:
                overlaps.append(signal.id)
            running_now.add(signal.id)
            calls[signal.id] += 1
            try:
                plan = plans[signal.id]
                kind, arg = plan[delivery.attempt - 1] if delivery.attempt <= len(plan) else (
                    "return", None)
                if kind == "raise":
                    raise arg
                if kind == "cancelled":
                    await _cancelled_future()()
                if kind == "retry":
                    raise Retry(arg)
                if kind == "reject":
                    raise Reject(arg)
                return arg
            finally:
                running_now.discard(signal.id)

        consumer = bus.consumer("risk", {"JOB": handle})
        stream = bus.keys.topic("JOB").stream
        returned = {"early": False}
        async with anyio.create_task_group() as tg:
            async def serve() -> None:
                await consumer.run()
                returned["early"] = not consumer._stopping

            tg.start_soon(serve)
            await eventually(lambda: _v(bool(consumer.keeper.round_trips >= 0
                                             and consumer._idle)))
            for fields in garbage:
                await bus.redis.xadd(stream, fields)
            for signal_id, data, plan, others in signals:
                plans[signal_id] = plan
                targets = sorted({"risk", *others})
                await bus.publish(Signal(id=signal_id, type="JOB", source="desk",
                                         targets=targets, data=data).with_ttl(TTL))

            async def all_terminal() -> bool:
                for signal_id in plans:
                    status = await bus.status(signal_id)  # always parses
                    if not status.targets["risk"].state.terminal:
                        return False
                return True

            await eventually(all_terminal, timeout=TTL + 15)
            assert not returned["early"], "the consumer stopped by itself"

            async def acked() -> bool:
                groups = [g for g in await bus.groups("JOB") if g.agent == "risk"]
                return groups[0].pending == 0

            await eventually(acked, timeout=10)
            consumer.stop()
        assert overlaps == []
        assert all(1 <= calls[i] <= MAX_ATTEMPTS for i in calls)
        letters = await bus.dead_letters("JOB", limit=10_000)
        failed = [i for i in plans
                  if (await bus.status(i)).targets["risk"].state is StatusState.failed]
        from_signals = collections.Counter(d.signal.id for d in letters if d.signal is not None
                                           and d.signal.id in plans)
        assert from_signals == dict.fromkeys(failed, 1)
        undecodable = [d for d in letters if d.error_type == "DecodeError"]
        assert len(undecodable) == len(garbage)
        for signal_id, *_ in signals:
            target = (await bus.status(signal_id)).targets["risk"]
            if target.state is StatusState.processed:
                assert calls[signal_id] == target.attempts
            if target.error is not None:
                assert len(target.error.encode()) <= 500


async def _v(value: Any) -> Any:
    return value


PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.function_scoped_fixture,
                                                          HealthCheck.data_too_large])


@settings(PROPERTY, max_examples=15)
@given(SIGNALS, GARBAGE)
def test_hostile_handlers_and_inputs_on_the_embedded_backend(
    signals: list[Any], garbage: list[dict[bytes, bytes]],
) -> None:
    anyio.run(check, f"memory://hostile-{uuid.uuid4().hex[:8]}", signals, garbage)


@pytest.mark.redis
@settings(PROPERTY, max_examples=12)
@given(SIGNALS, GARBAGE)
def test_hostile_handlers_and_inputs_on_redis(
    redis_server: RedisProcess, signals: list[Any], garbage: list[dict[bytes, bytes]],
) -> None:
    anyio.run(check, redis_server.url, signals, garbage)


def test_the_strategies_do_reach_the_hostile_cases() -> None:
    """Guard: the drawn plans include every kind of hostility."""
    kinds: collections.Counter[str] = collections.Counter()
    floats: list[float] = []

    @settings(max_examples=300, deadline=None)
    @given(ACTIONS)
    def collect(action: tuple[str, Any]) -> None:
        kinds[action[0]] += 1
        if action[0] == "retry":
            floats.append(action[1])

    collect()
    assert set(kinds) == {"return", "raise", "cancelled", "retry", "reject"}
    assert any(not math.isfinite(f) for f in floats)
    sizes: set[int] = set()

    @settings(max_examples=100, deadline=None)
    @given(OTHERS)
    def collect_sizes(others: list[str]) -> None:
        sizes.add(len(others))

    collect_sizes()
    assert 0 in sizes and 20_000 in sizes
