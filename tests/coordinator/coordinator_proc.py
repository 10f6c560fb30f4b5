"""A coordinator process for the crash tests: ``python -m tests.coordinator.coordinator_proc
URL NS NAME``; prints ``ready`` once running."""

from __future__ import annotations

import sys

import anyio

import swarmbus
from swarmbus.coordinator import Coordinator, consolidation
from swarmbus.logging import configure_logging

_fold = consolidation.fold_entries


async def _slow_fold(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Slow folding down so the test's kills land while consolidation is under way."""
    await anyio.sleep(0.02)
    return await _fold(*args, **kwargs)


consolidation.fold_entries = _slow_fold


async def main(url: str, namespace: str, name: str) -> None:
    configure_logging("json", "error")
    async with swarmbus.connect(url, namespace=namespace) as bus:
        coordinator = Coordinator(bus, name=name, batch=50, poll=0.01, reclaim_idle=1.0,
                                  discover_every=0.5, janitor_every=3600, analytics_every=3600)
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)
            print("ready", flush=True)


if __name__ == "__main__":
    try:
        anyio.run(main, *sys.argv[1:4])
    except KeyboardInterrupt:
        pass
