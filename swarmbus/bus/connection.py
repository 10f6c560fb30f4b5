"""Connecting: ``connect()`` and the ``Bus`` every other part of swarmbus works through."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import redis.asyncio as aioredis
import structlog
from redis import exceptions as rexc
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff

from ..errors import BusConnectionError, BusResponseError, ConfigurationError, SwarmbusError
from ..settings import Settings, mask_url
from .faults import CONNECTION_ERRORS
from .keys import Keys

if TYPE_CHECKING:
    from .consume import Consumer, Handler, Slots
    from .leases import LeaseKeeper
    from .signal import Signal
    from .status import DeadLetter, GroupInfo, SignalStatus

__all__ = ["Bus", "connect", "register_memory_factory", "translate_errors"]

log = structlog.get_logger(__name__)

_memory_servers: dict[str, Any] = {}
#: Set by ``swarmbus.agents.memory`` on import: ``bus`` never imports ``agents`` itself.
_memory_factory: Callable[[Bus, Any], Any] | None = None


def register_memory_factory(factory: Callable[[Bus, Any], Any]) -> None:
    """Install what ``Bus.memory()`` builds (the agents package does this on import)."""
    global _memory_factory
    _memory_factory = factory
_memory_lock = threading.Lock()


def _memory_server(url: str) -> Any:
    import fakeredis

    name = url.split("://", 1)[1].strip("/") or "default"
    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = fakeredis.FakeServer(version=(7,))
            _memory_servers[name] = server
    return server


def _memory_client(url: str) -> aioredis.Redis:
    import fakeredis

    client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=_memory_server(url), version=(7,))
    return client


def _redis_client(settings: Settings) -> aioredis.Redis:
    tcp: dict[str, Any] = {}
    if not settings.redis_url.lower().startswith("unix://"):
        tcp["socket_keepalive"] = True  # unix socket connections refuse the option
    try:
        return aioredis.Redis.from_url(
            settings.redis_url,
            decode_responses=False,
            # Longer than any blocking read we issue, short enough to notice a dead peer.
            socket_timeout=max(10.0, settings.block_timeout + 5.0),
            socket_connect_timeout=5.0,
            health_check_interval=30,
            **tcp,
            # Stale pooled connections after a server restart fail once: retry twice quickly.
            # Everything we send is safe to repeat (idempotent publish, idempotent acks).
            retry=RedisRetry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            client_name=f"swarmbus:{settings.namespace}",
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot use redis url {mask_url(settings.redis_url)!r}: {exc}"
        ) from None


@contextmanager
def translate_errors(settings: Settings) -> Iterator[None]:
    """Turn redis-py exceptions into swarmbus ones, at the ``bus`` boundary."""
    try:
        yield
    except SwarmbusError:
        raise
    except CONNECTION_ERRORS as exc:
        raise BusConnectionError(
            f"cannot reach redis at {settings.masked_url}: {_scrub(exc, settings)}"
        ) from exc
    except rexc.RedisError as exc:
        raise BusResponseError(f"redis error: {_scrub(exc, settings)}") from exc


def _scrub(exc: BaseException, settings: Settings) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace(settings.redis_url, settings.masked_url)


class Bus:
    """A connection to one swarmbus namespace on one Redis (or the embedded backend).

    Use as ``async with swarmbus.connect(url) as bus:``. Every method is safe to call from
    many tasks at once; the underlying client pools connections.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.embedded = settings.redis_url.lower().startswith("memory://")
        # Typed as Any on purpose: redis-py types every reply as a union over
        # ``decode_responses``; swarmbus always reads bytes and parses replies where it
        # reads them, so the unions would only add casts.
        self.redis: Any = (
            _memory_client(settings.redis_url) if self.embedded else _redis_client(settings)
        )
        #: Topics this process already put in the namespace registry.
        self.known_topics: set[str] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Bus {self.settings.masked_url} namespace={self.settings.namespace!r}>"

    async def __aenter__(self) -> Self:
        try:
            await self.ping()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def ping(self) -> None:
        with translate_errors(self.settings):
            await self.redis.ping()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.redis.aclose()

    def errors(self) -> Any:
        """Context manager translating redis-py errors for this bus's settings."""
        return translate_errors(self.settings)

    def sync_client(self, *, socket_timeout: float = 5.0) -> Any:
        """A blocking client on the same server, for threads (lease renewal).

        A connection of its own: what the event loop's pool does (or fails to do) never
        delays it. On the embedded backend it shares the in-process server.
        """
        if self.embedded:
            import fakeredis

            return fakeredis.FakeRedis(server=_memory_server(self.settings.redis_url),
                                       version=(7,))
        import redis

        tcp: dict[str, Any] = {}
        if not self.settings.redis_url.lower().startswith("unix://"):
            tcp["socket_keepalive"] = True
        return redis.Redis.from_url(
            self.settings.redis_url, decode_responses=False, socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 5.0), **tcp,
            client_name=f"swarmbus:{self.settings.namespace}:leases",
        )

    # -- topics ---------------------------------------------------------------------------

    async def register_topics(self, topics: Iterable[str]) -> None:
        """Remember topic names in the namespace registry (once per process per topic)."""
        new = [t for t in topics if t not in self.known_topics]
        if new:
            with self.errors():
                await self.redis.sadd(self.keys.topics, *new)
            self.known_topics.update(new)

    async def topics(self) -> list[str]:
        """Every topic of the namespace: the registry plus any stream found by SCAN."""
        with self.errors():
            names = {t.decode() for t in await self.redis.smembers(self.keys.topics)}
            async for key in self.redis.scan_iter(match=self.keys.stream_pattern(), count=500):
                topic = self.keys.topic_of_stream(key.decode())
                if topic:
                    names.add(topic)
        return sorted(names)

    # -- facade over the bus modules ------------------------------------------------------

    async def publish(self, signal: Signal) -> str:
        """Publish one signal; returns its id. Idempotent on ``signal.id``."""
        from .publish import publish

        return await publish(self, signal)

    async def publish_many(self, signals: Sequence[Signal]) -> list[str]:
        """Publish a batch in one pipelined round trip; each signal stays atomic."""
        from .publish import publish_many

        return await publish_many(self, signals)

    async def status(self, signal_id: str, *, topic: str | None = None) -> SignalStatus:
        """Per-target status of a signal; ``SignalNotFound`` if unknown."""
        from .status import get_status

        return await get_status(self, signal_id, topic=topic)

    async def wait(
        self, signal_id: str, timeout: float | timedelta | None = None, *, topic: str | None = None
    ) -> SignalStatus:
        """Wait until every target of the signal is terminal; ``WaitTimeout`` past timeout."""
        from .status import wait

        return await wait(self, signal_id, timeout=timeout, topic=topic)

    def tail(
        self,
        topics: str | Sequence[str] | None = None,
        *,
        since: datetime | timedelta | str | None = None,
        last: int | None = None,
        follow: bool = False,
    ) -> AsyncIterator[Signal]:
        """Read signals without joining any consumer group."""
        from .tail import tail

        return tail(self, topics, since=since, last=last, follow=follow)

    async def groups(self, topic: str | None = None) -> list[GroupInfo]:
        """Consumer groups (one per subscribing agent) with pending, lag and consumers."""
        from .status import groups

        return await groups(self, topic)

    async def dead_letters(self, topic: str, *, limit: int = 100) -> list[DeadLetter]:
        from .dlq import dead_letters

        return await dead_letters(self, topic, limit=limit)

    async def dead_letter(self, topic: str, dead_letter_id: str) -> DeadLetter:
        """One dead letter by its id; ``NotFound`` if there is none."""
        from .dlq import dead_letter

        return await dead_letter(self, topic, dead_letter_id)

    async def replay_dead_letters(
        self,
        topic: str,
        ids: Sequence[str] | None = None,
        *,
        progress: Callable[[int, int], Any] | None = None,
    ) -> int:
        """Put dead letters back on ``topic``; ``progress(done, total)`` is called per chunk."""
        from .dlq import replay_dead_letters

        return await replay_dead_letters(self, topic, ids, progress=progress)

    async def purge_dead_letters(self, topic: str) -> int:
        from .dlq import purge_dead_letters

        return await purge_dead_letters(self, topic)

    def memory(self, agent: Any) -> Any:
        """The ``Memory`` of ``agent`` (a name, or an ``Agent`` for its pattern features)."""
        if _memory_factory is None:  # pragma: no cover - swarmbus/__init__ imports agents
            import swarmbus.agents  # noqa: F401
        assert _memory_factory is not None
        return _memory_factory(self, agent)

    def consumer(
        self,
        agent: str,
        handlers: dict[str, Handler],
        *,
        concurrency: int | None = None,
        consumer_name: str | None = None,
        slots: Slots | None = None,
        keeper: LeaseKeeper | None = None,
    ) -> Consumer:
        """A consumer of ``agent``'s group on each topic in ``handlers``."""
        from .consume import Consumer

        return Consumer(
            self, agent, handlers, concurrency=concurrency, consumer_name=consumer_name,
            slots=slots, keeper=keeper,
        )


def connect(
    url: str | None = None, *, settings: Settings | None = None, **overrides: Any
) -> Bus:
    """A ``Bus`` for ``url`` (else ``settings.redis_url``, else ``SWARMBUS_REDIS_URL``).

    :param url: ``redis://``, ``rediss://``, ``unix://`` or ``memory://name``.
    :param settings: full settings; ``overrides`` replace single fields of them.
    """
    values: dict[str, Any] = dict(overrides)
    if url is not None:
        values["redis_url"] = url
    try:
        if settings is None:
            resolved = Settings(**values)
        elif values:
            resolved = Settings(**{**_explicit(settings), **values})
        else:
            resolved = settings
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return Bus(resolved)


def _explicit(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in Settings.model_fields}
