"""``Agent``: a named set of signal handlers, the unit a worker runs."""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from ..bus.keys import check_agent, check_topic
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..bus.signal import Signal
    from .context import Context

__all__ = ["Agent", "HandlerFunc", "Route"]

#: ``async def handler(signal: Signal, ctx: Context) -> None``, or a plain ``def``
HandlerFunc = Callable[["Signal", "Context"], Awaitable[Any]] | Callable[["Signal", "Context"], Any]
F = TypeVar("F", bound=HandlerFunc)


@dataclass(frozen=True, slots=True)
class Route:
    topic: str
    func: HandlerFunc
    data: type[BaseModel] | None
    #: False for a plain ``def`` handler: it runs in a worker thread.
    is_async: bool = True


class Agent:
    """A named agent: its handlers per signal type, its version and its memory options.

    :param name: lowercase agent name; also its consumer group on every topic it handles.
    :param version: recorded in heartbeats and decisions.
    :param pattern_features: context paths (``market.trend``) patterns are learned over.
    :param pattern_bins: bin edges for numeric features (``{"risk.score": [0.3, 0.7]}``);
        numbers without declared bins fall into decades (see ``agents.patterns``).
    :param memory: False turns memory calls into no-ops (for A/B comparisons).
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "0.0.0",
        pattern_features: Sequence[str] = (),
        pattern_bins: Mapping[str, Sequence[float]] | None = None,
        memory: bool = True,
        description: str = "",
    ) -> None:
        self.name = check_agent(name)
        self.version = version
        self.pattern_features = list(pattern_features)
        self.pattern_bins = {k: sorted(v) for k, v in (pattern_bins or {}).items()}
        self.memory_enabled = memory
        self.description = description
        self.routes: dict[str, Route] = {}

    def __repr__(self) -> str:
        return f"<Agent {self.name} v{self.version} topics={sorted(self.routes)}>"

    @property
    def topics(self) -> list[str]:
        return sorted(self.routes)

    def on(self, type: str, *, data: type[BaseModel] | None = None) -> Callable[[F], F]:
        """Register the decorated function as this agent's handler for signals of ``type``.

        ``async def`` handlers run on the event loop. Plain ``def`` handlers (blocking SDK
        calls, CPU work) run in a worker thread, as FastAPI runs them, bounded by the
        worker's concurrency; from there, ``ctx.call(ctx.publish, ...)`` runs any of the
        context's coroutines.

        :param data: a pydantic model ``signal.data`` must validate into; the instance is
            ``ctx.data``. Data that does not validate is dead-lettered at once.
        """
        check_topic(type)
        is_model = isinstance(data, builtins.type) and issubclass(data, BaseModel)
        if data is not None and not is_model:
            raise ConfigurationError(f"data= must be a pydantic model class, got {data!r}")

        def register(func: F) -> F:
            registered: F = func  # the check below narrows ``func``; return it as given
            if not callable(func) or inspect.isclass(func):
                raise ConfigurationError(
                    f"handler {func!r} for {type!r} must be a function: "
                    "async def handler(signal, ctx) or def handler(signal, ctx)"
                )
            if type in self.routes:
                raise ConfigurationError(
                    f"agent {self.name!r} already handles {type!r} "
                    f"with {getattr(self.routes[type].func, '__name__', '?')!r}"
                )
            is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
                builtins.type(func).__call__)
            self.routes[type] = Route(type, func, data, is_async)
            return registered

        return register

