"""Decisions: short-term memory of what an agent decided, why, and how it turned out.

Every decision and every outcome is one script in the agent's hash slot: the record, its
indexes, the STM event the coordinator consumes, and the minute/hour rollups that let
``stats`` answer a 24 h window without reading a single decision.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..bus import scripts
from ..bus.keys import AgentKeys
from ..bus.signal import new_id
from ..errors import EffectConflict, NotFound

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = [
    "Decision",
    "DecisionLog",
    "DecisionNotFound",
    "DecisionStats",
    "DecisionType",
    "Outcome",
    "Reasoning",
    "latency_bin",
]

#: Latency histogram: bin i holds latencies in (0.1 ms * 1.25**(i-1), 0.1 ms * 1.25**i].
_LAT_BASE = 0.1
_LAT_GROWTH = 1.25
_LAT_BINS = 120
#: ``stats`` windows are whole minutes: the window starts at the minute ``window`` ago.
MINUTE = 60


class DecisionType(StrEnum):
    """Common decision types; any string is accepted as a decision type."""

    SOURCE_SELECTION = "SOURCE_SELECTION"
    QUERY_EXECUTION = "QUERY_EXECUTION"
    SIGNAL_GENERATION = "SIGNAL_GENERATION"
    RISK_ASSESSMENT = "RISK_ASSESSMENT"
    STRATEGY_SELECTION = "STRATEGY_SELECTION"
    TRADE_EXECUTION = "TRADE_EXECUTION"


class DecisionNotFound(NotFound):
    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        super().__init__(
            f"unknown decision {decision_id!r}: never recorded, or past decision_retention"
        )


class Reasoning(BaseModel):
    """Why a decision was made. Extra keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    scores: dict[str, float] = Field(default_factory=dict)
    selected: list[str] = Field(default_factory=list)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    memory_influenced: bool = False
    patterns_applied: list[str] = Field(default_factory=list)


class Outcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    success: bool
    quality_score: float | None = Field(default=None, ge=0.0, le=1.0)
    latency_ms: float | None = Field(default=None, ge=0.0)
    errors: list[str] = Field(default_factory=list)
    signals_generated: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    agent: str
    agent_version: str = ""
    decision_type: str
    context: dict[str, Any] = Field(default_factory=dict)
    reasoning: Reasoning = Field(default_factory=Reasoning)
    signal_id: str | None = None
    parent_decision_id: str | None = None
    #: The context bucketed over the agent's pattern features (what patterns key on).
    conditions: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    outcome: Outcome | None = None


class DecisionStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    decision_type: str | None
    window_start: datetime
    count: int
    outcomes: int
    success_rate: float | None
    mean_confidence: float | None
    mean_quality: float | None
    #: From a log-scale histogram: within 12 % of the exact percentile.
    latency_p50_ms: float | None
    latency_p95_ms: float | None


def _essence(decision: Decision) -> Any:
    """What makes two records the same decision (ids and times aside)."""
    return decision.model_dump(mode="json", include={
        "decision_type", "context", "reasoning", "parent_decision_id", "signal_id"})


def decision_agent(decision_id: str) -> str | None:
    """The agent a decision id belongs to (ids are ``AGENT~ID``)."""
    agent, sep, _ = decision_id.partition("~")
    return agent if sep else None


def latency_bin(latency_ms: float) -> int:
    if latency_ms <= _LAT_BASE:
        return 0
    return min(_LAT_BINS, math.ceil(math.log(latency_ms / _LAT_BASE, _LAT_GROWTH) - 1e-9))


def _bin_value(index: int) -> float:
    """Representative latency of a bin: the geometric middle of its bounds."""
    if index == 0:
        return _LAT_BASE
    return float(_LAT_BASE * _LAT_GROWTH ** (index - 0.5))


def _percentile(hist: dict[int, float], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0.0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return _bin_value(index)
    return _bin_value(max(hist))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _to_datetime(value: datetime | timedelta | None, default: datetime) -> datetime:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return datetime.now(UTC) - value
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class DecisionLog:
    """Decisions of one agent: write, query, chain, stats."""

    def __init__(self, bus: Bus, agent: str, version: str = "") -> None:
        self.bus = bus
        self.agent = agent
        self.version = version
        self.keys: AgentKeys = bus.keys.memory(agent)

    # -- writing ---------------------------------------------------------------------------

    def new_id(self, suffix: str | None = None) -> str:
        return f"{self.agent}~{suffix or new_id()}"

    async def record(
        self,
        decision_type: str,
        *,
        context: dict[str, Any] | None = None,
        reasoning: Reasoning | dict[str, Any] | None = None,
        parent_decision_id: str | None = None,
        signal_id: str | None = None,
        decision_id: str | None = None,
        conditions: dict[str, str] | None = None,
    ) -> Decision:
        """Record a decision; a no-op returning the stored one if ``decision_id`` was
        recorded already with the same content, ``EffectConflict`` if with another."""
        decision = Decision(
            id=decision_id or self.new_id(),
            agent=self.agent,
            agent_version=self.version,
            decision_type=str(decision_type),
            context=dict(context or {}),
            reasoning=Reasoning.model_validate(reasoning or {}),
            signal_id=signal_id,
            parent_decision_id=parent_decision_id,
            conditions=dict(conditions or {}),
            created_at=datetime.now(UTC),
        )
        if await self.write(decision):
            return decision
        stored = await self.get(decision.id)
        if _essence(stored) != _essence(decision):
            raise EffectConflict(
                f"decision {decision.id} is already recorded with another type, context, "
                f"reasoning or parent ({stored.decision_type!r}, not "
                f"{decision.decision_type!r}); give distinct decisions distinct key= values"
            )
        return stored

    async def write(self, decision: Decision, *, stm: bool = True) -> bool:
        """Store a decision record as it is (``stm=False``: no STM event, for restores).

        Returns False when a record with that id exists already.
        """
        settings = self.bus.settings
        parent_decision_id = decision.parent_decision_id
        created = _ms(decision.created_at)
        retention_ms = int(settings.decision_retention * 1000)
        parent_agent = decision_agent(parent_decision_id) if parent_decision_id else None
        same_slot = parent_decision_id is not None and parent_agent == self.agent
        k = self.keys
        keys = [
            k.decision(decision.id), k.decisions, k.decisions_of_type(decision.decision_type),
            k.stm, k.minute(created // 60_000), k.hour(created // 3_600_000),
            k.children(parent_decision_id if same_slot else "~"),  # type: ignore[arg-type]
            k.types,
        ]
        confidence = decision.reasoning.confidence
        args = [
            decision.id, created, decision.decision_type,
            decision.model_dump_json(exclude={"outcome"}), retention_ms,
            "" if confidence is None else repr(confidence),
            parent_decision_id if same_slot else "",
            retention_ms + 86_400_000,
            "1" if stm else "0",
        ]
        with self.bus.errors():
            fresh = await scripts.run(self.bus.redis, scripts.DECIDE, keys, args)
            if fresh and parent_decision_id and not same_slot and parent_agent:
                # The parent lives in another agent's slot: link it in a second step (a
                # missing link only hides this decision from the parent's descendants).
                children = self.bus.keys.memory(parent_agent).children(parent_decision_id)
                async with self.bus.redis.pipeline(transaction=False) as pipe:
                    pipe.sadd(children, decision.id)
                    pipe.pexpire(children, retention_ms)
                    await pipe.execute()
        return bool(fresh)

    async def record_outcome(
        self,
        decision_id: str,
        *,
        success: bool,
        quality_score: float | None = None,
        latency_ms: float | None = None,
        errors: list[str] | None = None,
        signals_generated: list[str] | None = None,
        data: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> bool:
        """Record how a decision turned out; False if an outcome was already recorded.

        :param created_at: the decision's creation time when the caller knows it (saves
            one round trip); otherwise it is read from the record.
        """
        outcome = Outcome(
            success=success, quality_score=quality_score, latency_ms=latency_ms,
            errors=list(errors or []), signals_generated=list(signals_generated or []),
            data=dict(data or {}),
        )
        return await self.write_outcome(decision_id, outcome, created_at=created_at)

    async def write_outcome(
        self,
        decision_id: str,
        outcome: Outcome,
        *,
        created_at: datetime | None = None,
        stm: bool = True,
    ) -> bool:
        """Store an outcome as it is (``stm=False``: no STM event, for restores)."""
        k = self.keys
        with self.bus.errors():
            if created_at is None:
                raw = await self.bus.redis.hget(k.decision(decision_id), "t")
                if raw is None:
                    raise DecisionNotFound(decision_id)
                created = int(raw)
            else:
                created = _ms(created_at)
            keys = [k.decision(decision_id), k.stm, k.minute(created // 60_000),
                    k.hour(created // 3_600_000)]
            quality, latency = outcome.quality_score, outcome.latency_ms
            args = [
                decision_id, outcome.model_dump_json(), "1" if outcome.success else "0",
                "" if quality is None else repr(float(quality)),
                "" if latency is None else latency_bin(latency), created,
                "1" if stm else "0",
            ]
            result = int(await scripts.run(self.bus.redis, scripts.OUTCOME, keys, args))
        if result == -1:
            raise DecisionNotFound(decision_id)
        if result == -2:  # the creation time we were given is not the record's
            return await self.write_outcome(decision_id, outcome, stm=stm)
        return result == 1

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _parse(raw: list[bytes | None]) -> Decision | None:
        record, outcome = raw
        if record is None:
            return None
        body = orjson.loads(record)
        if outcome is not None:
            body["outcome"] = orjson.loads(outcome)
        return Decision.model_validate(body)

    async def get(self, decision_id: str) -> Decision:
        with self.bus.errors():
            raw = await self.bus.redis.hmget(self.keys.decision(decision_id), ["r", "o"])
        decision = self._parse(raw)
        if decision is None:
            raise DecisionNotFound(decision_id)
        return decision

    async def many(self, ids: list[str]) -> list[Decision]:
        """Decisions by id, across agents, in one round trip; unknown ids are skipped."""
        if not ids:
            return []
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                owner = decision_agent(i) or self.agent
                pipe.hmget(self.bus.keys.memory(owner).decision(i), ["r", "o"])
            rows = await pipe.execute()
        return [d for d in (self._parse(r) for r in rows) if d is not None]

    async def query(
        self,
        *,
        decision_type: str | None = None,
        since: datetime | timedelta | None = None,
        until: datetime | None = None,
        success: bool | None = None,
        limit: int = 50,
    ) -> list[Decision]:
        """Newest first. ``success`` filters on recorded outcomes (undecided ones drop out)."""
        index = self.keys.decisions_of_type(decision_type) if decision_type else self.keys.decisions
        low = _ms(_to_datetime(since, datetime.fromtimestamp(0, UTC)))
        high = _ms(_to_datetime(until, datetime.now(UTC) + timedelta(days=1)))
        out: list[Decision] = []
        offset = 0
        page = max(limit, 50) if success is None else max(limit * 4, 200)
        with self.bus.errors():
            while len(out) < limit:
                ids = await self.bus.redis.zrevrangebyscore(
                    index, high, low, start=offset, num=page
                )
                if not ids:
                    break
                offset += len(ids)
                for d in await self.many([i.decode() for i in ids]):
                    if success is None or (d.outcome is not None and d.outcome.success is success):
                        out.append(d)
                if len(ids) < page:
                    break
        return out[:limit]

    async def chain(self, decision_id: str) -> list[Decision]:
        """Ancestors (root first), the decision, then its descendants breadth-first."""
        me = await self.get(decision_id)
        ancestors: list[Decision] = []
        seen = {me.id}
        parent = me.parent_decision_id
        while parent and parent not in seen:
            found = await self.many([parent])
            if not found:
                break
            seen.add(parent)
            ancestors.append(found[0])
            parent = found[0].parent_decision_id
        descendants: list[Decision] = []
        frontier = [me.id]
        with self.bus.errors():
            while frontier:
                async with self.bus.redis.pipeline(transaction=False) as pipe:
                    for i in frontier:
                        owner = decision_agent(i) or self.agent
                        pipe.smembers(self.bus.keys.memory(owner).children(i))
                    child_sets = await pipe.execute()
                children = sorted({c.decode() for s in child_sets for c in s} - seen)
                seen.update(children)
                found = sorted(await self.many(children), key=lambda d: d.created_at)
                descendants.extend(found)
                frontier = [d.id for d in found]
        return [*reversed(ancestors), me, *descendants]

    async def stats(
        self, *, window: float | timedelta = 86_400.0, decision_type: str | None = None
    ) -> DecisionStats:
        """Statistics of the decisions made in the last ``window`` (whole minutes).

        Reads rollups, never decisions: at most ~140 small hashes for a day, added up by
        one script.
        """
        seconds = window.total_seconds() if isinstance(window, timedelta) else float(window)
        now_min = int(time.time()) // MINUTE
        start_min = now_min - math.ceil(seconds / MINUTE) + 1
        keys = self._rollup_keys(start_min, now_min)
        with self.bus.errors():
            flat = await scripts.run(self.bus.redis, scripts.STATS, keys,
                                     [decision_type or "*"])
        sums = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
        hist = {int(k[2:]): v for k, v in sums.items() if k.startswith("l:")}
        count, outcomes = int(sums.get("n", 0)), int(sums.get("on", 0))
        return DecisionStats(
            decision_type=decision_type,
            window_start=datetime.fromtimestamp(start_min * MINUTE, UTC),
            count=count,
            outcomes=outcomes,
            success_rate=sums.get("s", 0.0) / outcomes if outcomes else None,
            mean_confidence=sums["cs"] / sums["cn"] if sums.get("cn") else None,
            mean_quality=sums["qs"] / sums["qn"] if sums.get("qn") else None,
            latency_p50_ms=_percentile(hist, 0.50),
            latency_p95_ms=_percentile(hist, 0.95),
        )

    def _rollup_keys(self, start_min: int, end_min: int) -> list[str]:
        """Whole hours as hour rollups, the ragged ends as minute rollups."""
        k = self.keys
        keys: list[str] = []
        minute = start_min
        while minute <= end_min:
            if minute % 60 == 0 and minute + 59 <= end_min:
                keys.append(k.hour(minute // 60))
                minute += 60
            else:
                keys.append(k.minute(minute))
                minute += 1
        return keys
