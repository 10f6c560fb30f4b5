"""Small helpers shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from swarmbus.bus.consume import Consumer


@asynccontextmanager
async def running(*consumers: Consumer) -> AsyncIterator[None]:
    """Run consumers for the body of the ``async with``, then stop them gracefully."""
    async with anyio.create_task_group() as tg:
        for consumer in consumers:
            await tg.start(consumer.run)
        try:
            yield
        finally:
            for consumer in consumers:
                consumer.stop()


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    last: Any = None
    with anyio.move_on_after(timeout):
        while True:
            last = await check()
            if last:
                return last
            await anyio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")
