"""Producer and worker processes for the end-to-end benchmarks.

``python -m bench.e2e_proc worker SYSTEM URL NS TARGETS OUT`` consumes until SIGTERM,
then writes its publish-to-handler latencies (ms) as JSON to OUT.
``python -m bench.e2e_proc producer SYSTEM URL NS TARGETS COUNT RATE`` publishes COUNT
signals, as fast as it can (RATE 0, batches of 100) or RATE single publishes a second,
and prints the time of its first publish.

SYSTEM is ``swarmbus``, ``faststream`` (RedisBroker, StreamSub consumer groups) or
``raw`` (redis-py: pipelined XADD; XREADGROUP COUNT 100 + XACK).
"""

from __future__ import annotations

import json
import signal as signals
import sys
import time
from typing import Any

import anyio
import orjson

PAYLOAD = {"symbol": "BTC-USD", "size": 1250.5, "side": "buy", "venue": "x"}
TOPIC = "BENCH"


def stream_key(system: str, namespace: str) -> str:
    if system == "swarmbus":
        from swarmbus.bus.keys import Keys

        return Keys(namespace).topic(TOPIC).stream
    return f"{namespace}:{system}-bench"


def groups(system: str, targets: int) -> list[str]:
    return [f"worker-{i}" for i in range(targets)]


async def _until_term() -> None:
    with anyio.open_signal_receiver(signals.SIGTERM, signals.SIGINT) as received:
        async for _ in received:
            return


async def worker(system: str, url: str, namespace: str, targets: int, out: str) -> None:
    latencies: list[float] = []

    def seen(sent: float) -> None:
        latencies.append((time.time() - sent) * 1000)

    if system == "swarmbus":
        import swarmbus
        from swarmbus import Agent

        agents = []
        for name in groups(system, targets):
            agent = Agent(name)

            @agent.on(TOPIC)
            async def handle(signal: Any, ctx: Any) -> None:
                seen(signal.data["sent"])

            agents.append(agent)
        async with swarmbus.connect(url, namespace=namespace, log_level="error") as bus:
            w = swarmbus.Worker(bus, agents)
            async with anyio.create_task_group() as tg:
                await tg.start(w.run)
                print("ready", flush=True)
                await _until_term()
                w.stop()
    elif system == "faststream":
        from faststream.redis import RedisBroker, StreamSub

        broker = RedisBroker(url, logger=None)
        key = stream_key(system, namespace)
        for name in groups(system, targets):

            @broker.subscriber(stream=StreamSub(key, group=name, consumer="c1",
                                                max_records=100), max_workers=64)
            async def handle(body: dict[str, Any]) -> None:
                seen(body["sent"])

        async with broker:
            await broker.start()
            print("ready", flush=True)
            await _until_term()
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        key = stream_key(system, namespace)
        for name in groups(system, targets):
            await client.xgroup_create(key, name, id="$", mkstream=True)

        async def consume(group: str) -> None:
            while True:
                result = await client.xreadgroup(group, "c1", {key: ">"}, count=100, block=1000)
                for _, entries in result or []:
                    for _, fields in entries:
                        seen(orjson.loads(fields[b"d"])["sent"])
                    await client.xack(key, group, *[e[0] for e in entries])

        async with anyio.create_task_group() as tg:
            for name in groups(system, targets):
                tg.start_soon(consume, name)
            print("ready", flush=True)
            await _until_term()
            tg.cancel_scope.cancel()
        await client.aclose()
    await anyio.Path(out).write_text(json.dumps(latencies))


async def producer(system: str, url: str, namespace: str, targets: int, count: int,
                   rate: float) -> None:
    names = groups(system, targets)
    batch = 100 if rate == 0 else 1
    first = time.time()
    if system == "swarmbus":
        import swarmbus
        from swarmbus import Signal

        async with swarmbus.connect(url, namespace=namespace) as bus:
            first = time.time()
            for i in range(0, count, batch):
                now = time.time()
                signals_ = [Signal(type=TOPIC, source="producer", targets=names,
                                   data={**PAYLOAD, "n": j, "sent": now})
                            for j in range(i, min(i + batch, count))]
                if batch == 1:
                    await bus.publish(signals_[0])
                else:
                    await bus.publish_many(signals_)
                await _pace(first, i + batch, rate)
    elif system == "faststream":
        from faststream.redis import RedisBroker

        broker = RedisBroker(url, logger=None)
        key = stream_key(system, namespace)
        async with broker:
            first = time.time()
            for i in range(0, count, batch):
                now = time.time()
                async with anyio.create_task_group() as tg:
                    for j in range(i, min(i + batch, count)):
                        tg.start_soon(_fs_publish, broker, {**PAYLOAD, "n": j, "sent": now}, key)
                await _pace(first, i + batch, rate)
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        key = stream_key(system, namespace)
        first = time.time()
        for i in range(0, count, batch):
            now = time.time()
            async with client.pipeline(transaction=False) as pipe:
                for j in range(i, min(i + batch, count)):
                    pipe.xadd(key, {"d": orjson.dumps({**PAYLOAD, "n": j, "sent": now})})
                await pipe.execute()
            await _pace(first, i + batch, rate)
        await client.aclose()
    print(first, flush=True)


async def _fs_publish(broker: Any, body: dict[str, Any], key: str) -> None:
    await broker.publish(body, stream=key)


async def _pace(first: float, sent: int, rate: float) -> None:
    if rate:
        await anyio.sleep(max(0.0, first + sent / rate - time.time()))


if __name__ == "__main__":
    from swarmbus.logging import configure_logging

    configure_logging("json", "error")  # stdout carries the protocol with the orchestrator
    role, system, url, namespace, targets, *rest = sys.argv[1:]
    if role == "worker":
        anyio.run(worker, system, url, namespace, int(targets), rest[0])
    else:
        anyio.run(producer, system, url, namespace, int(targets), int(rest[0]), float(rest[1]))
