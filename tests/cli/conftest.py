"""Fixtures for the CLI tests: a runner on the private Redis, and direct reads of its state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis

from swarmbus.bus.keys import Keys
from swarmbus.bus.status import StatusState, parse_target
from swarmbus.testing import RedisProcess
from tests.cli.runner import CLI, cli_env


@pytest.fixture
def cli(redis_server: RedisProcess, namespace: str) -> Iterator[CLI]:
    runner = CLI(cli_env(redis_server.url, namespace), namespace)
    yield runner
    for proc in runner.procs:
        proc.close()


@pytest.fixture
def offline_cli(namespace: str) -> CLI:
    """For commands that fail before they touch Redis (the URL points nowhere useful)."""
    return CLI(cli_env("redis://127.0.0.1:1/0", namespace), namespace)


@pytest.fixture
def rclient(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def state_of(
    rclient: redis.Redis, namespace: str
) -> Callable[[str, str], dict[str, StatusState]]:
    """``state_of(topic, signal_id)`` -> {target: state}, read straight from Redis."""
    keys = Keys(namespace)

    def read(topic: str, signal_id: str) -> dict[str, StatusState]:
        raw = cast(dict[bytes, bytes], rclient.hgetall(keys.topic(topic).status(signal_id)))
        return {k.decode(): parse_target(v).state for k, v in raw.items()
                if not k.startswith(b"_")}

    return read
