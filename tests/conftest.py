"""Fixtures: the private redis-server, the embedded backend, and buses that close themselves."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import swarmbus
from swarmbus.testing import REDIS_SERVER, RedisProcess

BACKENDS = ["memory", "redis"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _need_redis() -> None:
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; CI must run the real-Redis tier")
        pytest.skip("redis-server not on PATH: real-Redis tier skipped (apt-get install redis)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One private redis-server for the whole session (never the user's)."""
    _need_redis()
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start extra private servers (e.g. with AOF) that a test may kill and restart."""
    _need_redis()
    started: list[RedisProcess] = []

    def make(*, aof: bool = True) -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis-{len(started)}", aof=aof)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace of its own per test, so tests never see each other's keys."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """The URL of each backend in turn: the embedded one, then the private redis-server."""
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex[:8]}"
    server: RedisProcess = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def make_bus(
    backend_url: str, namespace: str
) -> AsyncIterator[Callable[..., Awaitable[swarmbus.Bus]]]:
    """Open buses on the test's backend and namespace; all are closed after the test."""
    opened: list[swarmbus.Bus] = []

    async def make(**overrides: Any) -> swarmbus.Bus:
        overrides.setdefault("namespace", namespace)
        bus = swarmbus.connect(overrides.pop("url", backend_url), **overrides)
        await bus.__aenter__()
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        await bus.close()
