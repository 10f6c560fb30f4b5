"""Consolidation: fold every agent's STM outcome events into its patterns, exactly once.

The coordinator reads each agent's STM stream through one consumer group (``coordinator``)
shared by every coordinator replica. An outcome event is applied by the FOLD script, which
marks the event applied, updates the statistics and the confidence indexes, and acks the
entry in one step: crashes, replays and competing replicas never count an event twice, so
the patterns always equal a recomputation from the decision records.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from redis import exceptions as rexc

from ..agents.patterns import conditions_hash, pattern_id
from ..bus import scripts

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["GROUP", "consolidate", "ensure_group", "fold_entries", "reclaim"]

log = structlog.get_logger(__name__)

GROUP = "coordinator"


async def ensure_group(bus: Bus, agent: str) -> None:
    """Create the coordinators' group on ``agent``'s STM (from its start) if missing."""
    try:
        await bus.redis.xgroup_create(bus.keys.memory(agent).stm, GROUP, id="0", mkstream=True)
    except rexc.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _fold_call(
    bus: Bus, agent: str, entry_id: str, fields: dict[bytes, bytes]
) -> tuple[scripts.Script, list[str], list[Any]] | None:
    """The FOLD call for one outcome event; None for an event that is not an outcome."""
    if fields.get(b"k") != b"o":
        return None
    record = orjson.loads(fields[b"r"])
    outcome = orjson.loads(fields[b"o"])
    dtype = str(record["decision_type"])
    conds = {str(k): str(v) for k, v in (record.get("conditions") or {}).items()}
    choice = [str(c) for c in (record.get("reasoning") or {}).get("selected", [])]
    pid = pattern_id(dtype, conds, choice)
    k = bus.keys.memory(agent)
    quality = outcome.get("quality_score")
    keys = [k.pattern(pid), k.patterns, k.patterns_of_type(dtype),
            k.pattern_match(dtype, conditions_hash(conds)), k.applied, k.stm]
    args = [entry_id, GROUP, pid, agent, dtype, orjson.dumps(conds, option=orjson.OPT_SORT_KEYS),
            orjson.dumps(choice), "1" if outcome.get("success") else "0",
            "" if quality is None else repr(float(quality)), int(time.time() * 1000),
            int(entry_id.split("-")[0])]
    return scripts.FOLD, keys, args


async def fold_entries(
    bus: Bus, agent: str, entries: list[tuple[bytes, dict[bytes, bytes] | None]]
) -> int:
    """Fold STM entries read for the coordinators' group; returns outcomes folded.

    Decision events and unreadable events are only acked (an unreadable one is logged:
    there is nothing to learn from it, and it must not block the stream).
    """
    stm = bus.keys.memory(agent).stm
    calls = []
    plain: list[bytes] = []
    for raw_id, fields in entries:
        if not fields:
            plain.append(raw_id)  # trimmed while pending: nothing to fold
            continue
        try:
            call = _fold_call(bus, agent, raw_id.decode(), fields)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            log.error("stm_event_unreadable", agent=agent, entry_id=raw_id.decode(),
                      error=str(exc))
            plain.append(raw_id)
            continue
        if call is None:
            plain.append(raw_id)
        else:
            calls.append(call)
    for result in await scripts.run_many(bus.redis, calls):
        if isinstance(result, Exception):
            raise result
    if plain:
        await bus.redis.xack(stm, GROUP, *plain)
    return len(calls)


async def consolidate(
    bus: Bus,
    agents: str | Sequence[str],
    consumer: str,
    *,
    count: int = 500,
    pending: bool = False,
    block: float | None = None,
) -> int:
    """Read up to ``count`` STM events per agent, in one call for all of them, and fold
    them; returns the events handled.

    :param pending: re-read this consumer's own unacked events (after a restart) instead
        of new ones.
    :param block: seconds to wait for new events when there are none (real Redis only).
    """
    names = [agents] if isinstance(agents, str) else list(agents)
    if not names:
        return 0
    streams = {bus.keys.memory(a).stm: "0" if pending else ">" for a in names}
    reply = await bus.redis.xreadgroup(
        GROUP, consumer, streams, count=count,
        block=None if block is None or pending else int(block * 1000),
    )
    handled = 0
    for stream, entries in reply or []:
        agent = bus.keys.agent_of_stm(stream.decode())
        if agent is not None and entries:
            await fold_entries(bus, agent, entries)
            handled += len(entries)
    return handled


async def reclaim(bus: Bus, agent: str, consumer: str, *, min_idle: float,
                  count: int = 500) -> int:
    """Take over and fold events a dead coordinator replica read but never folded."""
    stm = bus.keys.memory(agent).stm
    _, entries, *_ = await bus.redis.xautoclaim(stm, GROUP, consumer, int(min_idle * 1000),
                                                start_id="0-0", count=count)
    if entries:
        await fold_entries(bus, agent, entries)
    return len(entries)
