"""``Context``: what a handler gets besides the signal."""

from __future__ import annotations

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

__all__ = ["Context"]


class Context:
    """Per-delivery context of a handler.

    Everything a handler publishes through ``ctx.publish`` gets an id derived from (signal
    id, agent, sequence number): a handler re-run after a crash publishes the same ids, and
    the bus's idempotent publish drops the duplicates.
    """

    def __init__(
        self, bus: Bus, agent: Agent, signal: Signal, delivery: Delivery, data: Any
    ) -> None:
        self.bus = bus
        self.agent = agent
        self.signal = signal
        self.delivery = delivery
        #: ``signal.data``, or the model instance when the handler declared ``data=Model``.
        self.data = data
        self.log = structlog.get_logger("swarmbus.agent").bind(
            agent=agent.name, signal_id=signal.id, topic=signal.type, attempt=delivery.attempt
        )
        self._published = 0
        #: Set by the memory layer when the handler makes a decision (shown in status).
        self.decision_id: str | None = None

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
        return await self.bus.publish(signal)

    def _lineage(self) -> dict[str, Any]:
        return {
            "id": self._next_id("signal"),
            "causation_id": self.signal.id,
            "correlation_id": self.signal.correlation_id or self.signal.id,
        }
