"""``Context``: what a handler gets besides the signal."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.from_thread
import orjson
import structlog
from pydantic import BaseModel, ValidationError

from ..bus.publish import publish_once
from ..bus.signal import Severity, Signal, derive_id
from ..errors import EffectConflict
from .decisions import Reasoning

if TYPE_CHECKING:
    from ..bus.connection import Bus
    from ..bus.consume import Delivery
    from .agent import Agent
    from .memory import DecisionHandle, Memory
    from .state import StateStore

__all__ = ["Context"]

T = TypeVar("T")

#: What makes a published signal the same effect (times and headers such as trace
#: context differ between runs of the same handler and are left out).
_SIGNAL_EFFECT = {"type", "source", "targets", "data", "severity", "confidence", "context",
                  "recommended_action"}


def _signal_effect(signal: Signal) -> bytes:
    return orjson.dumps(signal.model_dump(mode="json", include=_SIGNAL_EFFECT),
                        option=orjson.OPT_SORT_KEYS)


class Context:
    """Per-delivery context of a handler.

    Effects are effectively-once. A signal published with ``ctx.publish`` or a decision
    made with ``ctx.decide`` gets an id derived from the delivered signal, this agent and
    the effect itself (its type, targets and content), or from an explicit ``key=``. A
    handler re-run after a crash derives the same ids even if it produces its effects in
    another order, and the idempotent writes drop the duplicates. Identical effects made
    on purpose in one run stay distinct (they are numbered by occurrence). An existing
    record under a derived id that is not the same effect raises ``EffectConflict``.
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
        self._occurrences: dict[tuple[str, str], int] = {}
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

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], /, *args: Any,
             **kwargs: Any) -> T:
        """Run one of the context's coroutines from a plain ``def`` handler.

        A ``def`` handler runs in a worker thread: ``ctx.call(ctx.publish, "ALERT",
        targets=["x"])`` runs the coroutine on the worker's event loop and returns its
        result. (In an ``async def`` handler, ``await`` it instead.)
        """
        return anyio.from_thread.run(functools.partial(func, *args, **kwargs))

    def _effect_id(self, kind: str, effect: str, key: str | None) -> str:
        if key is not None:
            if not isinstance(key, str) or not key:
                raise ValueError(f"key= must be a non-empty string, got {key!r}")
            return derive_id(self.signal.id, self.agent.name, kind, "key", key)
        seen = self._occurrences.get((kind, effect), 0) + 1
        self._occurrences[(kind, effect)] = seen
        return derive_id(self.signal.id, self.agent.name, kind, effect, str(seen))

    async def decide(
        self,
        decision_type: str,
        *,
        context: Mapping[str, Any] | None = None,
        reasoning: Reasoning | Mapping[str, Any] | None = None,
        parent_decision_id: str | None = None,
        key: str | None = None,
    ) -> DecisionHandle:
        """Record a decision made while handling this signal.

        Its id derives from this delivery and the decision itself (type, context,
        reasoning, parent), or from ``key``: a re-run after a crash finds the decision
        already recorded instead of making a second one. ``EffectConflict`` when a
        different decision is recorded under that id.
        """
        context = dict(context if context is not None else self.signal.context)
        why = reasoning if isinstance(reasoning, Reasoning) else Reasoning.model_validate(
            dict(reasoning or {}))
        effect = orjson.dumps(
            {"type": str(decision_type), "context": context,
             "reasoning": why.model_dump(mode="json"), "parent": parent_decision_id},
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            default=str,
        ).decode()
        suffix = self._effect_id("decision", effect, key)
        handle = await self.memory.decide(
            decision_type, context=context, reasoning=why,
            parent_decision_id=parent_decision_id, signal_id=self.signal.id,
            decision_id=self.memory.log.new_id(suffix), _signals=self.published,
        )
        self.decision_id = handle.id
        return handle

    @property
    def attempt(self) -> int:
        """1 on the first delivery, then 2, 3, ... up to ``max_attempts``."""
        return self.delivery.attempt

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
        key: str | None = None,
    ) -> str:
        """Publish a signal caused by the one being handled; returns its id.

        ``source`` is this agent, ``causation_id`` the handled signal and
        ``correlation_id`` carries on the handled signal's (or starts at its id). The id
        derives from the effect (or ``key``), so a re-run publishes it once.
        ``EffectConflict`` when a different signal was published under that id.
        """
        if isinstance(type, Signal):
            signal = type
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
            )
        effect = _signal_effect(signal)
        signal = signal.model_copy(update={
            "id": self._effect_id("signal", effect.decode(), key),
            "causation_id": self.signal.id,
            "correlation_id": self.signal.correlation_id or self.signal.id,
        })
        if ttl is not None:
            signal = signal.with_ttl(ttl)
        signal_id, existing = await publish_once(self.bus, signal)
        if existing and not _same_signal(existing, effect):
            raise EffectConflict(
                f"signal {signal_id} was already published by an earlier run of this handler "
                f"with other content (type/targets/data/context); give distinct effects "
                f"distinct key= values"
            )
        self.published.append(signal_id)
        return signal_id


def _same_signal(stored: bytes, effect: bytes) -> bool:
    try:
        return _signal_effect(Signal.model_validate_json(stored)) == effect
    except (ValidationError, ValueError):
        return False
