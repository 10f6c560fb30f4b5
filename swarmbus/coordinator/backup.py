"""Backup and restore of agent memory: decisions (with outcomes), patterns, states,
checkpoints, sharing and pattern profiles, as gzip JSON lines.

The first line is a header (``format``, ``version``, source namespace, time); the last is
an ``end`` record with the counts, so a truncated file is detected on import. Restoring
writes through the same scripts as live writes, minus the STM events, so indexes and
rollups are rebuilt exactly and a coordinator does not learn the same outcomes twice:
export, then import into an empty namespace, gives identical query results.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..agents.decisions import Decision, DecisionLog
from ..agents.patterns import conditions_hash
from ..errors import Conflict, SwarmbusError

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["BACKUP_VERSION", "BackupError", "export_backup", "import_backup"]

BACKUP_FORMAT = "swarmbus-backup"
BACKUP_VERSION = 1
_CHUNK = 500

Progress = Callable[[int], Any]


class BackupError(SwarmbusError):
    """A backup file that cannot be restored (wrong format, version, or truncated)."""


def _decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def memory_agents(bus: Bus) -> list[str]:
    """Every agent with any memory key in the namespace."""
    prefix = f"{bus.keys.namespace}:{{a:"
    names: set[str] = set()
    async for key in bus.redis.scan_iter(match=prefix + "*", count=1000):
        text = key.decode()
        names.add(text[len(prefix) : text.index("}", len(prefix))])
    return sorted(names)


async def _agent_records(bus: Bus, agent: str) -> list[dict[str, Any]]:
    k = bus.keys.memory(agent)
    redis = bus.redis
    out: list[dict[str, Any]] = []
    profile = await redis.get(k.profile)
    if profile:
        out.append({"kind": "profile", "agent": agent, "profile": orjson.loads(profile)})
    state = await redis.hgetall(k.state)
    if state:
        out.append({"kind": "state", "agent": agent, "fields": _decode_hash(state)})
    for cid, seq in await redis.zrange(k.checkpoints, 0, -1, withscores=True):
        fields = await redis.hgetall(k.checkpoint(cid.decode()))
        if fields:
            out.append({"kind": "checkpoint", "agent": agent, "seq": seq,
                        "fields": _decode_hash(fields)})
    ids = [i.decode() for i in await redis.zrange(k.decisions, 0, -1)]
    log = DecisionLog(bus, agent)
    for start in range(0, len(ids), _CHUNK):
        for d in await log.many(ids[start : start + _CHUNK]):
            out.append({"kind": "decision", "agent": agent,
                        "decision": d.model_dump(mode="json")})
    for pid in await redis.zrange(k.patterns, 0, -1):
        fields = await redis.hgetall(k.pattern(pid.decode()))
        if fields:
            out.append({"kind": "pattern", "agent": agent, "fields": _decode_hash(fields)})
    shared = await redis.zrange(k.shared, 0, -1, withscores=True)
    if shared:
        out.append({"kind": "shared", "agent": agent,
                    "members": {m.decode(): s for m, s in shared}})
    return out


async def export_backup(bus: Bus, path: str | Path, *, progress: Progress | None = None) -> int:
    """Write every agent's memory to ``path``; returns the number of records written."""
    counts: Counter[str] = Counter()
    header = {"format": BACKUP_FORMAT, "version": BACKUP_VERSION,
              "namespace": bus.keys.namespace, "created_at": datetime.now(UTC).isoformat()}
    try:
        out = gzip.open(path, "wb")
    except OSError as exc:
        raise BackupError(f"cannot write backup {path}: {exc}") from None
    with out:
        out.write(orjson.dumps(header) + b"\n")
        with bus.errors():
            agents = await memory_agents(bus)
        for agent in agents:
            with bus.errors():
                records = await _agent_records(bus, agent)
            for record in records:
                out.write(orjson.dumps(record) + b"\n")
                counts[record["kind"]] += 1
                if progress is not None:
                    progress(sum(counts.values()))
        out.write(orjson.dumps({"kind": "end", "counts": dict(counts)}) + b"\n")
    return sum(counts.values())


def _read(path: str | Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rb") as src:
            lines = iter(src)
            try:
                header = orjson.loads(next(lines))
            except StopIteration:
                raise BackupError(f"{path}: empty file, not a swarmbus backup") from None
            if not isinstance(header, dict) or header.get("format") != BACKUP_FORMAT:
                raise BackupError(f"{path}: not a swarmbus backup (no swarmbus header)")
            if header.get("version") != BACKUP_VERSION:
                raise BackupError(f"{path}: backup version {header.get('version')} is not "
                                  f"supported (this swarmbus reads version {BACKUP_VERSION})")
            ended = False
            for line in lines:
                record = orjson.loads(line)
                if record.get("kind") == "end":
                    ended = True
                    break
                yield record
            if not ended:
                raise BackupError(f"{path}: truncated backup (no end record)")
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise BackupError(f"{path}: cannot read backup: {exc}") from None


async def _namespace_empty(bus: Bus) -> bool:
    async for _ in bus.redis.scan_iter(match=f"{bus.keys.namespace}:*", count=1000):
        return False
    return True


async def import_backup(
    bus: Bus, path: str | Path, *, merge: bool = False, progress: Progress | None = None
) -> int:
    """Restore a backup into ``bus``'s namespace; returns the records restored.

    Refuses a namespace that holds anything unless ``merge``: then records already present
    (same decision id, pattern, checkpoint) are kept as they are. The file is read and
    checked completely before anything is written.
    """
    # Read and check the whole file first: a bad or truncated backup writes nothing.
    records = list(_read(path))
    with bus.errors():
        if not merge and not await _namespace_empty(bus):
            raise Conflict(
                f"namespace {bus.keys.namespace!r} is not empty: restore into an empty one, "
                "or pass merge=True (--merge) to add to what is there"
            )
        done = 0
        outcomes: list[tuple[str, Decision]] = []
        for record in records:
            await _restore(bus, record, outcomes)
            done += 1
            if progress is not None:
                progress(done)
        for agent, decision in outcomes:  # after every decision: chains may cross agents
            assert decision.outcome is not None
            await DecisionLog(bus, agent).write_outcome(
                decision.id, decision.outcome, created_at=decision.created_at, stm=False
            )
    return done


async def _restore(bus: Bus, record: dict[str, Any], outcomes: list[tuple[str, Decision]]) -> None:
    kind, agent = record.get("kind"), record.get("agent")
    if not isinstance(agent, str):
        raise BackupError(f"record without an agent: {record!r:.200}")
    k = bus.keys.memory(agent)
    redis = bus.redis
    if kind == "decision":
        decision = Decision.model_validate(record["decision"])
        await DecisionLog(bus, agent, decision.agent_version).write(decision, stm=False)
        if decision.outcome is not None:
            outcomes.append((agent, decision))
    elif kind == "pattern":
        fields = record["fields"]
        pid, dtype, confidence = fields["id"], fields["type"], float(fields.get("conf", 0))
        conds = orjson.loads(fields["cond"])
        if await redis.exists(k.pattern(pid)):
            return
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.pattern(pid), mapping=fields)
            pipe.zadd(k.patterns, {pid: confidence})
            pipe.zadd(k.patterns_of_type(dtype), {pid: confidence})
            pipe.zadd(k.pattern_match(dtype, conditions_hash(conds)), {pid: confidence})
            await pipe.execute()
    elif kind == "state":
        if not await redis.exists(k.state):
            await redis.hset(k.state, mapping=record["fields"])
    elif kind == "checkpoint":
        fields = record["fields"]
        if not await redis.exists(k.checkpoint(fields["id"])):
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hset(k.checkpoint(fields["id"]), mapping=fields)
                pipe.zadd(k.checkpoints, {fields["id"]: record["seq"]})
                await pipe.execute()
    elif kind == "shared":
        await redis.zadd(k.shared, record["members"])
    elif kind == "profile":
        await redis.set(k.profile, orjson.dumps(record["profile"]), nx=True)
    else:
        raise BackupError(f"unknown record kind {kind!r} in backup")
