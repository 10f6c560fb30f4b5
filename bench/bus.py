"""Bus workloads: publishing and consuming, swarmbus next to a raw redis-py floor."""

from __future__ import annotations

import time
import uuid

import anyio
import orjson
import redis.asyncio as aioredis

import swarmbus
from swarmbus import Signal
from swarmbus.bus.consume import Delivery

from .common import Figure
from .e2e import HAVE_FASTSTREAM

PAYLOAD = {"symbol": "BTC-USD", "size": 1250.5, "side": "buy", "venue": "x", "n": 0}


def _signals(n: int, targets: list[str]) -> list[Signal]:
    return [Signal(type="BENCH", source="producer", targets=targets, data={**PAYLOAD, "n": i})
            for i in range(n)]


async def swarmbus_publish_single(url: str, n: int) -> float:
    async with swarmbus.connect(url, namespace="b" + uuid.uuid4().hex[:8]) as bus:
        signals = _signals(n, ["worker"])
        start = time.perf_counter()
        for s in signals:
            await bus.publish(s)
        return n / (time.perf_counter() - start)


async def swarmbus_publish_many(url: str, n: int, batch: int) -> float:
    async with swarmbus.connect(url, namespace="b" + uuid.uuid4().hex[:8]) as bus:
        signals = _signals(n, ["worker"])
        start = time.perf_counter()
        for i in range(0, n, batch):
            await bus.publish_many(signals[i : i + batch])
        return n / (time.perf_counter() - start)


async def swarmbus_consume(url: str, n: int) -> float:
    """Consume + status + ack of ``n`` pre-published signals, in one process."""
    async with swarmbus.connect(url, namespace="b" + uuid.uuid4().hex[:8]) as bus:
        for i in range(0, n, 1000):
            await bus.publish_many(_signals(min(1000, n - i), ["worker"]))
        done = anyio.Event()

        async def handle(signal: Signal, delivery: Delivery) -> None:
            return None

        consumer = bus.consumer("worker", {"BENCH": handle})
        tk = bus.keys.topic("BENCH")
        async with anyio.create_task_group() as tg:
            start = time.perf_counter()
            await tg.start(consumer.run)
            while True:
                info = await bus.redis.xinfo_groups(tk.stream)
                g = info[0]
                if g["lag"] == 0 and g["pending"] == 0:
                    break
                await anyio.sleep(0.005)
            elapsed = time.perf_counter() - start
            consumer.stop()
            done.set()
        return n / elapsed


async def faststream_publish_single(url: str, n: int) -> float:
    """FastStream's ``RedisBroker.publish`` to a stream, one awaited publish at a time."""
    from faststream.redis import RedisBroker

    key = "fsbench:" + uuid.uuid4().hex[:8]
    broker = RedisBroker(url, logger=None)
    async with broker:
        start = time.perf_counter()
        for i in range(n):
            await broker.publish({**PAYLOAD, "n": i}, stream=key)
        rate = n / (time.perf_counter() - start)
    client = aioredis.Redis.from_url(url)
    await client.delete(key)
    await client.aclose()
    return rate


async def raw_publish_pipelined(url: str, n: int, batch: int) -> float:
    client = aioredis.Redis.from_url(url)
    key = "rawbench:" + uuid.uuid4().hex[:8]
    body = [orjson.dumps({**PAYLOAD, "n": i}) for i in range(n)]
    try:
        start = time.perf_counter()
        for i in range(0, n, batch):
            async with client.pipeline(transaction=False) as pipe:
                for b in body[i : i + batch]:
                    pipe.xadd(key, {"d": b})
                await pipe.execute()
        return n / (time.perf_counter() - start)
    finally:
        await client.delete(key)
        await client.aclose()


async def raw_publish_single(url: str, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    key = "rawbench:" + uuid.uuid4().hex[:8]
    try:
        start = time.perf_counter()
        for i in range(n):
            await client.xadd(key, {"d": orjson.dumps({**PAYLOAD, "n": i})})
        return n / (time.perf_counter() - start)
    finally:
        await client.delete(key)
        await client.aclose()


async def raw_consume(url: str, n: int) -> float:
    """XREADGROUP COUNT 100 + orjson decode + XACK per batch: the practical floor."""
    client = aioredis.Redis.from_url(url)
    key = "rawbench:" + uuid.uuid4().hex[:8]
    try:
        await client.xgroup_create(key, "g", id="$", mkstream=True)
        for i in range(0, n, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for j in range(i, min(i + 1000, n)):
                    pipe.xadd(key, {"d": orjson.dumps({**PAYLOAD, "n": j})})
                await pipe.execute()
        start = time.perf_counter()
        seen = 0
        while seen < n:
            result = await client.xreadgroup("g", "c", {key: ">"}, count=100)
            for _, entries in result:
                ids = [eid for eid, fields in entries if orjson.loads(fields[b"d"]) is not None]
                await client.xack(key, "g", *ids)
                seen += len(ids)
        return n / (time.perf_counter() - start)
    finally:
        await client.delete(key)
        await client.aclose()


async def run(url: str, quick: bool, repeats: int) -> list[Figure]:
    n = 5_000 if quick else 20_000
    figures = [
        Figure("publish single", "swarmbus", "signals/s"),
        Figure("publish single", "raw redis-py", "signals/s"),
        Figure("publish single", "FastStream", "signals/s"),
        Figure("publish_many x100", "swarmbus", "signals/s"),
        Figure("publish_many x100", "raw redis-py", "signals/s"),
        Figure("publish_many x1000", "swarmbus", "signals/s"),
        Figure("publish_many x1000", "raw redis-py", "signals/s"),
        Figure("consume+ack (1 process)", "swarmbus", "signals/s"),
        Figure("consume+ack (1 process)", "raw redis-py", "signals/s"),
    ]
    for _ in range(repeats):
        figures[0].values.append(await swarmbus_publish_single(url, n // 5))
        figures[1].values.append(await raw_publish_single(url, n // 5))
        if HAVE_FASTSTREAM:
            figures[2].values.append(await faststream_publish_single(url, n // 5))
        figures[3].values.append(await swarmbus_publish_many(url, n, 100))
        figures[4].values.append(await raw_publish_pipelined(url, n, 100))
        figures[5].values.append(await swarmbus_publish_many(url, n, 1000))
        figures[6].values.append(await raw_publish_pipelined(url, n, 1000))
        figures[7].values.append(await swarmbus_consume(url, n))
        figures[8].values.append(await raw_consume(url, n))
    return [f for f in figures if f.values]
