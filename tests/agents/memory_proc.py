"""Memory from another process: ``python -m tests.agents.memory_proc CMD URL NS AGENT ARG``.

``outcome``: record a successful outcome (quality 0.75) for decision id ARG.
``increment``: ARG times ``state.update`` adding 1 to ``count``.
"""

from __future__ import annotations

import sys

import anyio

import swarmbus


async def main(cmd: str, url: str, namespace: str, agent: str, arg: str) -> None:
    async with swarmbus.connect(url, namespace=namespace) as bus:
        memory = bus.memory(agent)
        if cmd == "outcome":
            assert await memory.record_outcome(arg, success=True, quality_score=0.75,
                                               latency_ms=12.0)
        elif cmd == "increment":
            for _ in range(int(arg)):
                await memory.state.update(lambda s: {**s, "count": s.get("count", 0) + 1})
        else:
            raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:6])
