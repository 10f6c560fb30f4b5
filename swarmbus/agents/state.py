"""Agent state: one JSON document per agent, optimistic locking, checkpoints, rollback."""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from pydantic import BaseModel, ConfigDict

from ..bus import scripts
from ..bus.signal import new_id
from ..errors import NotFound, StateConflict

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["Checkpoint", "NullState", "State", "StateStore"]

#: Checkpoints kept per agent.
KEEP_CHECKPOINTS = 20
_UPDATE_TRIES = 1000

Updater = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class State(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: dict[str, Any]
    version: int
    updated_at: datetime | None = None


class Checkpoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    label: str
    version: int
    created_at: datetime
    data: dict[str, Any]


def _when(ms: bytes | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC)


class StateStore:
    """The state of one agent."""

    def __init__(self, bus: Bus, agent: str, *, keep: int = KEEP_CHECKPOINTS) -> None:
        self.bus = bus
        self.agent = agent
        self.keep = keep
        self.keys = bus.keys.memory(agent)

    async def get(self) -> State:
        with self.bus.errors():
            v, d, t = await self.bus.redis.hmget(self.keys.state, ["v", "d", "t"])
        return State(data=orjson.loads(d) if d else {}, version=int(v or 0), updated_at=_when(t))

    async def set(self, data: dict[str, Any], *, expected_version: int | None = None) -> State:
        """Replace the state; with ``expected_version``, only if nobody moved it since."""
        body = orjson.dumps(data)
        now = datetime.now(UTC)
        args = [body, "" if expected_version is None else expected_version,
                int(now.timestamp() * 1000)]
        with self.bus.errors():
            ok, version = await scripts.run(self.bus.redis, scripts.STATE_SET,
                                            [self.keys.state], args)
        if ok != 1:
            raise StateConflict(
                f"state of {self.agent!r} is at version {version}, not {expected_version}: "
                "read it again and retry (or use state.update(fn), which does)"
            )
        return State(data=orjson.loads(body), version=int(version), updated_at=now)

    async def update(self, fn: Updater) -> State:
        """Read, apply ``fn`` (sync or async) to a copy, write back; retried on conflicts."""
        delay = 0.0005
        for _ in range(_UPDATE_TRIES):
            current = await self.get()
            result = fn(orjson.loads(orjson.dumps(current.data)))
            new = await result if inspect.isawaitable(result) else result
            try:
                return await self.set(new, expected_version=current.version)
            except StateConflict:
                await anyio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 0.05)
        raise StateConflict(f"state of {self.agent!r}: gave up after {_UPDATE_TRIES} conflicts")

    async def checkpoint(
        self, label: str = "", *, only_if_changed: bool = False
    ) -> Checkpoint | None:
        """Snapshot the state; None when ``only_if_changed`` and nothing changed (or the
        state was never set)."""
        checkpoint_id = new_id()
        now_ms = int(time.time() * 1000)
        keys = [self.keys.state, self.keys.checkpoints, self.keys.checkpoint(checkpoint_id)]
        args = [checkpoint_id, label, now_ms, self.keep, self.keys.checkpoint(""),
                "1" if only_if_changed else "0"]
        with self.bus.errors():
            made, _ = await scripts.run(self.bus.redis, scripts.CHECKPOINT, keys, args)
        if made != 1:
            return None
        return await self._load(checkpoint_id)

    async def _load(self, checkpoint_id: str) -> Checkpoint:
        with self.bus.errors():
            raw = await self.bus.redis.hgetall(self.keys.checkpoint(checkpoint_id))
        if not raw:
            raise NotFound(f"unknown checkpoint {checkpoint_id!r} of agent {self.agent!r}")
        return Checkpoint(
            id=raw[b"id"].decode(), label=raw[b"label"].decode(), version=int(raw[b"v"]),
            created_at=_when(raw[b"t"]) or datetime.now(UTC), data=orjson.loads(raw[b"d"]),
        )

    async def checkpoints(self) -> list[Checkpoint]:
        """Kept checkpoints, newest first."""
        with self.bus.errors():
            ids = await self.bus.redis.zrevrange(self.keys.checkpoints, 0, -1)
        return [await self._load(i.decode()) for i in ids]

    async def rollback(self, checkpoint_id: str | None = None) -> State:
        """Restore a checkpoint (None: the latest) as a new state version."""
        with self.bus.errors():
            if checkpoint_id is None:
                latest = await self.bus.redis.zrevrange(self.keys.checkpoints, 0, 0)
                if not latest:
                    raise NotFound(f"agent {self.agent!r} has no checkpoint to roll back to")
                checkpoint_id = latest[0].decode()
            now_ms = int(time.time() * 1000)
            version = await scripts.run(
                self.bus.redis, scripts.ROLLBACK,
                [self.keys.state, self.keys.checkpoint(checkpoint_id)], [now_ms],
            )
        if version == -1:
            raise NotFound(f"unknown checkpoint {checkpoint_id!r} of agent {self.agent!r}")
        return await self.get()


class NullState(StateStore):
    """State of an agent with memory off: reads are empty, writes are dropped."""

    async def get(self) -> State:
        return State(data={}, version=0)

    async def set(self, data: dict[str, Any], *, expected_version: int | None = None) -> State:
        return State(data=dict(data), version=0)

    async def update(self, fn: Updater) -> State:
        result = fn({})
        new = await result if inspect.isawaitable(result) else result
        return State(data=dict(new), version=0)

    async def checkpoint(
        self, label: str = "", *, only_if_changed: bool = False
    ) -> Checkpoint | None:
        return None

    async def checkpoints(self) -> list[Checkpoint]:
        return []

    async def rollback(self, checkpoint_id: str | None = None) -> State:
        return State(data={}, version=0)
