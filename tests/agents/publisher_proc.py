"""A publisher that rides out outages: ``python -m tests.agents.publisher_proc URL NS N RATE``.

Publishes N ORDER signals for ``alpha`` and ``beta`` at RATE per second. Ids are fixed up
front, so a publish retried after a timeout (which may or may not have reached Redis) is a
no-op: the bus's publish is idempotent on the id. Prints ``published N`` at the end.
"""

from __future__ import annotations

import sys
import time

import anyio

import swarmbus
from swarmbus import Signal
from swarmbus.bus.backoff import Backoff
from swarmbus.logging import configure_logging


async def main(url: str, namespace: str, n: int, rate: float) -> None:
    configure_logging("json", "warning")
    signals = [Signal(type="ORDER", source="desk", targets=["alpha", "beta"], data={"n": i})
               for i in range(n)]
    async with swarmbus.connect(url, namespace=namespace) as bus:
        start = time.monotonic()
        backoff = Backoff(cap=2.0)
        for i, signal in enumerate(signals):
            while True:
                try:
                    await bus.publish(signal)
                    backoff.reset()
                    break
                except swarmbus.SwarmbusError as exc:
                    print(f"retry {i}: {exc}", file=sys.stderr, flush=True)
                    await anyio.sleep(backoff.next())
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                await anyio.sleep(ahead)
    print(f"published {n}", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
