"""``Context``: what a handler gets besides the signal."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from ..bus.signal import Severity, Signal, derive_id

if TYPE_CHECKING:
    from ..bus.connection import Bus
    from ..bus.consume import Delivery
    from .agent import Agent
    from .decisions import Reasoning
    from .memory import DecisionHandle, Memory
    from .state import StateStore

__all__ = ["Context"]


class Context:
    """Per-delivery context of a handler.

    Everything a handler publishes through ``ctx.publish`` gets an id derived from (signal
    id, agent, sequence number): a handler re-run after a crash publishes the same ids, and
    the bus's idempotent publish drops the duplicates.
    """

    def __init__(
        self,
        bus: Bus,
        agent: Agent,
        signal: Signal,
        delivery: Delivery,
        data: Any,
        memory: Memory | None = None,
    ) -> None:
        self.bus = bus
        self.agent = agent
        self.signal = signal
        self.delivery = delivery
        #: ``signal.data``, or the model instance when the handler declared ``data=Model``.
        self.data = data
        self._published = 0
        self._decided = 0
        #: Ids of the signals this handler published (an outcome's default signals_generated).
        self.published: list[str] = []
        #: The last decision this handler made (shown in the signal's status).
        self.decision_id: str | None = None
        self.memory: Memory = memory if memory is not None else bus.memory(agent)

    @functools.cached_property
    def log(self) -> Any:
        """structlog logger bound to agent, signal id, topic and attempt (made on first use)."""
        return structlog.get_logger("swarmbus.agent").bind(
            agent=self.agent.name, signal_id=self.signal.id, topic=self.signal.type,
            attempt=self.delivery.attempt,
        )

    @property
    def state(self) -> StateStore:
        """This agent's state store (``ctx.memory.state``)."""
        return self.memory.state

    async def decide(
        self,
        decision_type: str,
        *,
        context: Mapping[str, Any] | None = None,
        reasoning: Reasoning | Mapping[str, Any] | None = None,
        parent_decision_id: str | None = None,
    ) -> DecisionHandle:
        """Record a decision made while handling this signal.

        Its id derives from (signal id, agent, sequence): a re-run after a crash finds the
        decision already recorded instead of making a second one.
        """
        self._decided += 1
        suffix = derive_id(self.signal.id, self.agent.name, "decision", str(self._decided))
        handle = await self.memory.decide(
            decision_type,
            context=context if context is not None else self.signal.context,
            reasoning=reasoning, parent_decision_id=parent_decision_id,
            signal_id=self.signal.id, decision_id=self.memory.log.new_id(suffix),
            _signals=self.published,
        )
        self.decision_id = handle.id
        return handle

    @property
    def attempt(self) -> int:
        """1 on the first delivery, then 2, 3, ... up to ``max_attempts``."""
        return self.delivery.attempt

    def _next_id(self, kind: str) -> str:
        self._published += 1
        return derive_id(self.signal.id, self.agent.name, kind, str(self._published))

    async def publish(
        self,
        type: str | Signal,
        *,
        targets: list[str] | None = None,
        data: Mapping[str, Any] | BaseModel | None = None,
        severity: Severity | str = Severity.medium,
        confidence: float | None = None,
        context: Mapping[str, Any] | None = None,
        recommended_action: str | None = None,
        ttl: float | timedelta | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Publish a signal caused by the one being handled; returns its id.

        ``source`` is this agent, ``causation_id`` the handled signal and
        ``correlation_id`` carries on the handled signal's (or starts at its id).
        """
        if isinstance(type, Signal):
            signal = type.model_copy(update=self._lineage())
        else:
            if isinstance(data, BaseModel):
                data = data.model_dump(mode="json")
            signal = Signal(
                type=type,
                source=self.agent.name,
                targets=list(targets or []),
                data=dict(data or {}),
                severity=Severity(severity),
                confidence=confidence,
                context=dict(context or {}),
                recommended_action=recommended_action,
                headers=dict(headers or {}),
                **self._lineage(),
            )
        if ttl is not None:
            signal = signal.with_ttl(ttl)
        signal_id = await self.bus.publish(signal)
        self.published.append(signal_id)
        return signal_id

    def _lineage(self) -> dict[str, Any]:
        return {
            "id": self._next_id("signal"),
            "causation_id": self.signal.id,
            "correlation_id": self.signal.correlation_id or self.signal.id,
        }
