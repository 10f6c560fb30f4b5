"""Behaviour only a real redis-server shows: NULL lag, unix sockets, a server that is down."""

from __future__ import annotations

import anyio
import pytest

import swarmbus
from swarmbus import Signal
from swarmbus.bus.consume import Delivery
from swarmbus.testing import RedisProcess, free_port
from tests.support import running

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_unknown_lag_after_a_deleted_entry_is_none_not_a_crash(
    redis_server: RedisProcess, namespace: str
) -> None:
    async with swarmbus.connect(redis_server.url, namespace=namespace) as bus:
        await bus.publish_many([Signal(type="L", source="s", targets=["a"]) for _ in range(5)])
        stream = bus.keys.topic("L").stream
        await bus.redis.xreadgroup("a", "c", {stream: ">"}, count=1)
        entries = await bus.redis.xrange(stream)
        await bus.redis.xdel(stream, entries[2][0])
        (group,) = await bus.groups("L")
    assert group.lag is None
    assert (group.pending, group.consumers) == (1, 1)


async def test_unix_socket_url(redis_server: RedisProcess, namespace: str) -> None:
    async with swarmbus.connect(redis_server.unix_url, namespace=namespace) as bus:
        handled: list[str] = []

        async def handle(signal: Signal, delivery: Delivery) -> None:
            handled.append(signal.id)

        async with running(bus.consumer("risk", {"T": handle})):
            signal_id = await bus.publish(Signal(type="T", source="s", targets=["risk"]))
            status = await bus.wait(signal_id, timeout=10)
    assert status.targets["risk"].state == "processed"
    assert handled == [signal_id]


async def test_unreachable_redis_is_one_clear_error_without_password(namespace: str) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(swarmbus.BusConnectionError) as info:
        async with swarmbus.connect(url, namespace=namespace):
            pass
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


async def test_consumer_started_while_redis_is_down_waits_and_then_works(
    redis_factory, namespace: str
) -> None:
    server: RedisProcess = redis_factory(aof=True)
    server.kill()
    handled: list[str] = []

    async def handle(signal: Signal, delivery: Delivery) -> None:
        handled.append(signal.id)

    bus = swarmbus.connect(server.url, namespace=namespace)  # not entered: no ping yet
    try:
        consumer = bus.consumer("risk", {"T": handle})
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await anyio.sleep(0.5)  # the consumer is retrying its set-up meanwhile
            server.start()
            with anyio.fail_after(20):
                while True:
                    try:
                        signal_id = await bus.publish(
                            Signal(type="T", source="s", targets=["risk"])
                        )
                        break
                    except swarmbus.BusConnectionError:
                        await anyio.sleep(0.1)
                status = await bus.wait(signal_id, timeout=15)
            consumer.stop()
    finally:
        await bus.close()
    assert status.targets["risk"].state == "processed"
    assert handled == [signal_id]
