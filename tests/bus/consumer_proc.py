"""A consumer process for the crash tests: ``python -m tests.bus.consumer_proc URL NS AGENT``.

It consumes topic ``LOAD`` as AGENT, sleeps ``--delay`` per signal, prints ``ready`` once
subscribed and counts what it handled in ``NS:test:handled:<consumer>``. A signal with
``data.crash`` set kills the process mid-handler (``os._exit``), like a segfault would.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

import swarmbus
from swarmbus import Signal
from swarmbus.bus.consume import Delivery
from swarmbus.logging import configure_logging


async def main(args: argparse.Namespace) -> None:
    configure_logging("json", "warning")
    async with swarmbus.connect(
        args.url, namespace=args.namespace, claim_idle=args.claim_idle, retry_backoff=0.01,
        max_attempts=args.max_attempts, log_level="warning",
    ) as bus:
        counter = f"{args.namespace}:test:handled"

        async def handle(signal: Signal, delivery: Delivery) -> None:
            if signal.data.get("crash"):
                os._exit(17)
            if args.delay:
                await anyio.sleep(args.delay)
            await bus.redis.hincrby(counter, delivery.consumer, 1)

        consumer = bus.consumer(args.agent, {"LOAD": handle}, concurrency=args.concurrency)
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)
            print("ready", consumer.name, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("agent")
    parser.add_argument("--claim-idle", type=float, default=1.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-attempts", type=int, default=5)
    try:
        anyio.run(main, parser.parse_args(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
