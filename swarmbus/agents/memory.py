"""``Memory``: one agent's decisions (STM), state and patterns (LTM) behind one object.

``bus.memory("risk-manager")`` from anywhere, ``ctx.memory`` inside a handler. An agent
built with ``memory=False`` gets a ``NullMemory``: the same calls, no effects, empty
results, so one handler runs unchanged with memory on and off (A/B comparisons).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ..bus.connection import register_memory_factory
from ..errors import NotFound
from .decisions import Decision, DecisionLog, DecisionNotFound, DecisionStats, Reasoning
from .patterns import Pattern, PatternStore, conditions
from .state import NullState, StateStore

if TYPE_CHECKING:
    from ..bus.connection import Bus
    from .agent import Agent

__all__ = ["DecisionHandle", "Memory", "NullDecisionLog", "NullMemory", "NullPatternStore",
           "memory_for"]


class DecisionHandle:
    """A decision just made: its ``id``, and ``outcome(...)`` to record how it went."""

    def __init__(
        self, memory: Memory, decision: Decision, signals: list[str] | None = None
    ) -> None:
        self.memory = memory
        self.decision = decision
        self._signals = signals

    @property
    def id(self) -> str:
        return self.decision.id

    def __repr__(self) -> str:
        return f"<DecisionHandle {self.id} {self.decision.decision_type}>"

    async def outcome(
        self,
        *,
        success: bool,
        quality_score: float | None = None,
        latency_ms: float | None = None,
        errors: list[str] | None = None,
        signals_generated: list[str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome once; False if one was recorded already (e.g. a re-run).

        Inside a handler ``signals_generated`` defaults to what the handler published.
        """
        if signals_generated is None and self._signals is not None:
            signals_generated = list(self._signals)
        return await self.memory.record_outcome(
            self.id, success=success, quality_score=quality_score, latency_ms=latency_ms,
            errors=errors, signals_generated=signals_generated, data=data,
            created_at=self.decision.created_at,
        )


class Memory:
    """Decisions, state and patterns of one agent."""

    enabled = True

    def __init__(self, bus: Bus, agent: str | Agent) -> None:
        self.bus = bus
        if isinstance(agent, str):
            self.agent = agent
            self.version = ""
            self._features: list[str] | None = None
            self._bins: dict[str, list[float]] = {}
        else:
            self.agent = agent.name
            self.version = agent.version
            self._features = list(agent.pattern_features)
            self._bins = {k: list(v) for k, v in agent.pattern_bins.items()}
        self.log = DecisionLog(bus, self.agent, self.version)
        self.state = StateStore(bus, self.agent)
        self.store = PatternStore(bus, self.agent)

    def __repr__(self) -> str:
        return f"<Memory {self.agent}>"

    # -- profile: which features patterns are keyed on ----------------------------------------

    async def register_profile(self) -> None:
        """Publish this agent's pattern features so other processes bucket contexts alike."""
        body = orjson.dumps({"features": self._features or [], "bins": self._bins,
                             "version": self.version})
        with self.bus.errors():
            await self.bus.redis.set(self.log.keys.profile, body)

    async def _profile(self) -> tuple[list[str], dict[str, list[float]]]:
        if self._features is None:
            with self.bus.errors():
                raw = await self.bus.redis.get(self.log.keys.profile)
            profile = orjson.loads(raw) if raw else {}
            self._features = list(profile.get("features", []))
            self._bins = dict(profile.get("bins", {}))
        return self._features, self._bins

    async def conditions(self, context: Mapping[str, Any]) -> dict[str, str]:
        features, bins = await self._profile()
        return conditions(context, features, bins)

    # -- decisions -------------------------------------------------------------------------

    async def decide(
        self,
        decision_type: str,
        *,
        context: Mapping[str, Any] | None = None,
        reasoning: Reasoning | Mapping[str, Any] | None = None,
        parent_decision_id: str | None = None,
        signal_id: str | None = None,
        decision_id: str | None = None,
        _signals: list[str] | None = None,
    ) -> DecisionHandle:
        """Record a decision; returns a handle to record its outcome with."""
        ctx = dict(context or {})
        decision = await self.log.record(
            decision_type, context=ctx,
            reasoning=reasoning if isinstance(reasoning, Reasoning) else dict(reasoning or {}),
            parent_decision_id=parent_decision_id, signal_id=signal_id,
            decision_id=decision_id, conditions=await self.conditions(ctx),
        )
        return DecisionHandle(self, decision, _signals)

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
        return await self.log.record_outcome(
            decision_id, success=success, quality_score=quality_score, latency_ms=latency_ms,
            errors=errors, signals_generated=signals_generated, data=data,
            created_at=created_at,
        )

    async def decisions(
        self,
        *,
        decision_type: str | None = None,
        since: datetime | timedelta | None = None,
        until: datetime | None = None,
        success: bool | None = None,
        limit: int = 50,
    ) -> list[Decision]:
        return await self.log.query(decision_type=decision_type, since=since, until=until,
                                    success=success, limit=limit)

    async def decision(self, decision_id: str) -> Decision:
        return await self.log.get(decision_id)

    async def chain(self, decision_id: str) -> list[Decision]:
        return await self.log.chain(decision_id)

    async def stats(
        self, *, window: float | timedelta = 86_400.0, decision_type: str | None = None
    ) -> DecisionStats:
        return await self.log.stats(window=window, decision_type=decision_type)

    async def decision_types(self) -> list[str]:
        """Every decision type this agent has recorded."""
        with self.bus.errors():
            return sorted(t.decode() for t in await self.bus.redis.smembers(self.log.keys.types))

    # -- patterns --------------------------------------------------------------------------

    async def patterns(
        self,
        *,
        decision_type: str | None = None,
        min_confidence: float = 0.0,
        include_shared: bool = False,
        limit: int = 20,
    ) -> list[Pattern]:
        return await self.store.query(decision_type=decision_type, min_confidence=min_confidence,
                                      include_shared=include_shared, limit=limit)

    async def pattern(self, pattern_id: str) -> Pattern:
        return await self.store.get(pattern_id)

    async def match(
        self, context: Mapping[str, Any], *, decision_type: str | None = None, limit: int = 10
    ) -> list[Pattern]:
        """Patterns learned under the conditions ``context`` falls into, best first."""
        conds = await self.conditions(context)
        if decision_type is not None:
            return await self.store.match(conds, decision_type, limit=limit)
        candidates = await self.store.query(limit=500)
        return [p for p in candidates if p.conditions == conds][:limit]

    async def share(self, pattern_id: str, with_agents: Sequence[str]) -> Pattern:
        return await self.store.share(pattern_id, with_agents)


class NullDecisionLog(DecisionLog):
    """Decisions of an agent with memory off: made (ids, handles) but never stored."""

    async def write(self, decision: Decision, *, stm: bool = True) -> bool:
        return True  # as if stored, so ``record`` hands the decision back

    async def write_outcome(self, decision_id: str, outcome: Any, **_: Any) -> bool:
        return False

    async def get(self, decision_id: str) -> Decision:
        raise DecisionNotFound(decision_id)

    async def many(self, ids: list[str]) -> list[Decision]:
        return []

    async def query(self, **_: Any) -> list[Decision]:
        return []

    async def chain(self, decision_id: str) -> list[Decision]:
        return []

    async def stats(
        self, *, window: float | timedelta = 86_400.0, decision_type: str | None = None
    ) -> DecisionStats:
        return DecisionStats(
            decision_type=decision_type, window_start=datetime.now(UTC), count=0, outcomes=0,
            success_rate=None, mean_confidence=None, mean_quality=None,
            latency_p50_ms=None, latency_p95_ms=None,
        )


class NullPatternStore(PatternStore):
    """Patterns of an agent with memory off: there are none."""

    async def query(self, **_: Any) -> list[Pattern]:
        return []

    async def match(self, conds: Mapping[str, str], decision_type: str, *,
                    limit: int = 10) -> list[Pattern]:
        return []

    async def get(self, pattern_id: str) -> Pattern:
        raise NotFound(f"agent {self.agent!r} runs with memory off: no pattern {pattern_id!r}")


class NullMemory(Memory):
    """Memory turned off: every call succeeds and remembers nothing."""

    enabled = False

    def __init__(self, bus: Bus, agent: str | Agent) -> None:
        super().__init__(bus, agent)
        self.log = NullDecisionLog(bus, self.agent, self.version)
        self.state = NullState(bus, self.agent)
        self.store = NullPatternStore(bus, self.agent)

    async def register_profile(self) -> None:
        return None

    async def decision_types(self) -> list[str]:
        return []


def memory_for(bus: Bus, agent: str | Agent) -> Memory:
    """The memory of ``agent`` on ``bus`` (a ``NullMemory`` for ``memory=False`` agents)."""
    if not isinstance(agent, str) and not agent.memory_enabled:
        return NullMemory(bus, agent)
    return Memory(bus, agent)


register_memory_factory(memory_for)
