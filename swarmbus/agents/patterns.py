"""Patterns (long-term memory): conditions -> choice -> outcome statistics.

A pattern is keyed by (agent, decision type, conditions, choice). *Conditions* are the
values at the agent's ``pattern_features`` paths in a decision's context, bucketed so the
set of patterns stays finite:

- strings are kept as they are (cut at 64 characters), booleans become ``true``/``false``;
- numbers with declared bins (``Agent(pattern_bins={"risk.score": [0.3, 0.7]})``) become
  ``<0.3``, ``[0.3,0.7)`` or ``>=0.7``;
- numbers without declared bins fall in decades: ``0``, ``[1e-2,1e-1)``, ``[1e3,1e4)``,
  negatives as ``-[1e0,1e1)``, anything below 1e-6 or from 1e12 up clamped to those ends;
- a missing path is ``missing``; lists and objects are ``other``.

The *choice* is ``reasoning.selected``. Confidence is the Wilson lower bound (95 %) of the
success rate, so a pattern seen 3 times at 100 % ranks below one seen 200 times at 90 %.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..bus.keys import AgentKeys
from ..errors import NotFound

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = [
    "MIN_SAMPLES",
    "Pattern",
    "PatternStore",
    "bucket",
    "conditions",
    "conditions_hash",
    "pattern_id",
    "wilson_lower_bound",
]

#: Below this many samples a pattern is a ``candidate``, from it on ``active``.
MIN_SAMPLES = 5
_MAG_LOW, _MAG_HIGH = -6, 12


def wilson_lower_bound(successes: int, n: int, z: float = 1.959963984540054) -> float:
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt((p * (1 - p) + z * z / (4 * n)) / n)
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _decade(x: float) -> str:
    exp = min(max(math.floor(math.log10(x)), _MAG_LOW), _MAG_HIGH - 1)
    return f"[1e{exp},1e{exp + 1})"


def bucket(value: Any, bins: Sequence[float] | None = None) -> str:
    """The condition label of one feature value (see the module docstring)."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value[:64]
    if isinstance(value, int | float):
        x = float(value)
        if math.isnan(x):
            return "missing"
        if bins:
            edges = sorted(bins)
            if x < edges[0]:
                return f"<{edges[0]:g}"
            for low, high in itertools.pairwise(edges):
                if low <= x < high:
                    return f"[{low:g},{high:g})"
            return f">={edges[-1]:g}"
        if x == 0:
            return "0"
        label = _decade(abs(x)) if math.isfinite(x) else f"[1e{_MAG_HIGH - 1},1e{_MAG_HIGH})"
        return label if x > 0 else "-" + label
    return "other"


def _lookup(context: Mapping[str, Any], path: str) -> Any:
    node: Any = context
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def conditions(
    context: Mapping[str, Any],
    features: Sequence[str],
    bins: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, str]:
    bins = bins or {}
    return {path: bucket(_lookup(context, path), bins.get(path)) for path in features}


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def conditions_hash(conds: Mapping[str, str]) -> str:
    return hashlib.blake2b(_canonical(conds), digest_size=8).hexdigest()


def pattern_id(decision_type: str, conds: Mapping[str, str], choice: Sequence[str]) -> str:
    digest = hashlib.blake2b(
        _canonical([decision_type, conds, list(choice)]), digest_size=10
    ).hexdigest()
    return "p" + digest


class Pattern(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    agent: str
    decision_type: str
    conditions: dict[str, str]
    choice: list[str]
    sample_size: int
    successes: int
    success_rate: float
    mean_quality: float | None
    quality_variance: float | None
    confidence: float
    version: int
    learned_at: datetime
    last_updated: datetime
    shared_with: list[str] = Field(default_factory=list)
    user_metadata: dict[str, Any] = Field(default_factory=dict)
    status: Literal["candidate", "active"]
    description: str


def describe(conds: Mapping[str, str], choice: Sequence[str], rate: float, n: int) -> str:
    when = " and ".join(f"{k}={v}" for k, v in conds.items()) or "always"
    return (f"when {when}, choosing [{', '.join(choice) or 'nothing'}] "
            f"succeeded {round(rate * 100)}% of {n} times")


def _time(raw: bytes | None) -> datetime:
    return datetime.fromtimestamp(int(raw or 0) / 1000, UTC)


def parse_pattern(raw: dict[bytes, bytes]) -> Pattern:
    n = int(raw.get(b"n", 0))
    s = int(raw.get(b"s", 0))
    qn = int(raw.get(b"qn", 0))
    qs = float(raw.get(b"qs", 0))
    qss = float(raw.get(b"qss", 0))
    conds = orjson.loads(raw[b"cond"])
    choice = orjson.loads(raw[b"choice"])
    rate = s / n if n else 0.0
    mean_q = qs / qn if qn else None
    var_q = max(0.0, qss / qn - (qs / qn) ** 2) if qn else None
    return Pattern(
        id=raw[b"id"].decode(), agent=raw[b"agent"].decode(), decision_type=raw[b"type"].decode(),
        conditions=conds, choice=choice, sample_size=n, successes=s, success_rate=rate,
        mean_quality=mean_q, quality_variance=var_q, confidence=float(raw.get(b"conf", 0)),
        version=int(raw.get(b"ver", 0)), learned_at=_time(raw.get(b"learned")),
        last_updated=_time(raw.get(b"updated")),
        shared_with=orjson.loads(raw.get(b"shared", b"[]")),
        user_metadata=orjson.loads(raw.get(b"meta", b"{}")),
        status="active" if n >= MIN_SAMPLES else "candidate",
        description=describe(conds, choice, rate, n),
    )


class PatternStore:
    """Read side of one agent's patterns (the coordinator writes them with FOLD)."""

    def __init__(self, bus: Bus, agent: str) -> None:
        self.bus = bus
        self.agent = agent
        self.keys: AgentKeys = bus.keys.memory(agent)

    async def _load(self, refs: Sequence[tuple[str, str]]) -> list[Pattern]:
        """Patterns by (owner agent, id), one round trip; vanished ones are skipped."""
        if not refs:
            return []
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            for owner, pid in refs:
                pipe.hgetall(self.bus.keys.memory(owner).pattern(pid))
            rows = await pipe.execute()
        return [parse_pattern(r) for r in rows if r]

    async def query(
        self,
        *,
        decision_type: str | None = None,
        min_confidence: float = 0.0,
        include_shared: bool = False,
        limit: int = 20,
    ) -> list[Pattern]:
        """Patterns by confidence, highest first, straight from the confidence index."""
        index = self.keys.patterns_of_type(decision_type) if decision_type else self.keys.patterns
        with self.bus.errors():
            ids = await self.bus.redis.zrevrangebyscore(
                index, "+inf", min_confidence, start=0, num=limit
            )
            refs = [(self.agent, i.decode()) for i in ids]
            if include_shared:
                shared = await self.bus.redis.zrevrangebyscore(
                    self.keys.shared, "+inf", min_confidence, start=0, num=limit * 2
                )
                for member in shared:
                    owner, _, pid = member.decode().partition("~")
                    refs.append((owner, pid))
            found = await self._load(refs)
        if decision_type:
            found = [p for p in found if p.decision_type == decision_type]
        found = [p for p in found if p.confidence >= min_confidence]
        found.sort(key=lambda p: (-p.confidence, -p.sample_size, p.id))
        return found[:limit]

    async def get(self, pattern_id: str) -> Pattern:
        with self.bus.errors():
            found = await self._load([(self.agent, pattern_id)])
        if not found:
            raise NotFound(f"unknown pattern {pattern_id!r} of agent {self.agent!r}")
        return found[0]

    async def match(
        self, conds: Mapping[str, str], decision_type: str, *, limit: int = 10
    ) -> list[Pattern]:
        """Patterns learned under exactly these conditions, best first (one per choice)."""
        index = self.keys.pattern_match(decision_type, conditions_hash(conds))
        with self.bus.errors():
            ids = await self.bus.redis.zrevrange(index, 0, limit - 1)
            return await self._load([(self.agent, i.decode()) for i in ids])

    async def share(self, pattern_id: str, with_agents: Sequence[str]) -> Pattern:
        """Let other agents see a pattern (``include_shared=True``)."""
        pattern = await self.get(pattern_id)
        agents = sorted(set(pattern.shared_with) | set(with_agents))
        with self.bus.errors():
            async with self.bus.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.keys.pattern(pattern_id), "shared", orjson.dumps(agents))
                for other in with_agents:
                    pipe.zadd(self.bus.keys.memory(other).shared,
                              {f"{self.agent}~{pattern_id}": pattern.confidence})
                await pipe.execute()
        return pattern.model_copy(update={"shared_with": agents})
