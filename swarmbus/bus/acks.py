"""Terminal outcomes and their acks: queued by handlers, flushed by one group commit.

Every terminal outcome a consumer decides (processed, failed, expired, ack only) becomes
an ``Op``. The flusher sends everything queued while the previous flush ran in one
pipelined round trip: one FINISH script per topic and 500 entries. A flush that fails on
connection trouble is retried as a whole (FINISH is idempotent: a terminal status is never
overwritten, an entry dead-lettered once is never dead-lettered again). A chunk the server
refuses for any other reason is split and retried entry by entry, so one bad entry can
never hold up the acks of a whole topic; an entry that still fails alone is acked with a
plain XACK and logged with the reason, instead of being retried forever.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from . import scripts
from .backoff import Backoff
from .faults import describe, is_transient, ride_out

if TYPE_CHECKING:
    from .connection import Bus

__all__ = ["Acker", "Op", "clean_text", "safe_decision_id", "status_message"]

log = structlog.get_logger(__name__)

#: Entries per FINISH call.
CHUNK = 500
#: Longest error text kept in a dead letter (characters).
ERROR_LIMIT = 4000
#: Longest message kept in a target's status (bytes of UTF-8, cut at a character).
STATUS_LIMIT = 500

_PACKABLE = re.compile(r"^[A-Za-z0-9_.:~/-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:~/-]")


def safe_decision_id(decision_id: object) -> str:
    """A decision id fit for the packed FINISH argument (no ',' or spaces), or ''."""
    if not isinstance(decision_id, str) or not decision_id:
        return ""
    return _UNSAFE.sub("_", decision_id[:200])


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8 (lone surrogates replaced): what Redis can be sent."""
    return text.encode("utf-8", "replace").decode("utf-8")


def status_message(text: str) -> str:
    """``text`` cut to at most ``STATUS_LIMIT`` bytes of UTF-8, at a character boundary."""
    return text.encode("utf-8", "replace")[:STATUS_LIMIT].decode("utf-8", "ignore")


@dataclass(slots=True)
class Op:
    """A terminal outcome of one entry, waiting to be flushed with its ack."""

    topic: str
    entry_id: str
    signal_id: str  # "~" when the entry has no usable signal id
    state: str  # s processed, f failed, x expired, a ack only
    attempts: int = 0
    decision_id: str = ""
    error_type: str = ""
    error: str = ""

    def packed(self, k: int) -> str:
        for part in (self.entry_id, self.signal_id):
            if not _PACKABLE.fullmatch(part):
                raise ValueError(f"unpackable id {part!r}")
        return (f"{self.entry_id},{self.signal_id},{self.state},{self.attempts},"
                f"{self.decision_id or '-'},{k}")


class Acker:
    """The flusher of one consumer: ``queue`` ops, ``run`` flushes them until cancelled.

    :param on_done: called with the ops of every chunk that reached Redis (the consumer
        forgets those entries then).
    """

    def __init__(self, bus: Bus, agent: str, consumer: str,
                 on_done: Callable[[list[Op]], None]) -> None:
        self.bus = bus
        self.agent = agent
        self.consumer = consumer
        self.on_done = on_done
        self._ops: dict[str, list[Op]] = {}
        self._wanted = anyio.Event()
        self.queued = 0

    def queue(self, op: Op) -> None:
        self._ops.setdefault(op.topic, []).append(op)
        self.queued += 1
        self._wanted.set()

    def __len__(self) -> int:
        return sum(len(ops) for ops in self._ops.values())

    async def run(self) -> None:
        """Group commit: every op queued while a flush runs goes into the next one."""
        backoff = Backoff()
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            try:
                await self.flush()
                backoff.reset()
            except Exception as exc:
                self._wanted.set()
                await ride_out(exc, backoff, log, "ack", consumer=self.consumer,
                               agent=self.agent, queued=len(self))

    async def flush(self) -> None:
        """Send everything queued; raises on connection trouble (the ops stay queued)."""
        if not self._ops:
            return
        ops, self._ops = self._ops, {}
        chunks: list[list[Op]] = []
        calls = []
        refused: list[tuple[list[Op], BaseException]] = []
        for topic_ops in ops.values():
            for i in range(0, len(topic_ops), CHUNK):
                chunk = topic_ops[i : i + CHUNK]
                try:
                    calls.append(self._call(chunk))
                except ValueError as bad:  # an id that cannot be packed: a bug of ours
                    refused.append((chunk, bad))
                    continue
                chunks.append(chunk)
        try:
            results = await scripts.run_many(self.bus.redis, calls)
        except BaseException:
            self._requeue([op for chunk in chunks for op in chunk])
            self._requeue([op for chunk, _ in refused for op in chunk])
            raise
        retry: list[Op] = []
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, Exception):
                if is_transient(result):
                    retry.extend(chunk)
                else:
                    refused.append((chunk, result))
                continue
            if int(result) != len(chunk):  # ids are checked before packing: a bug
                log.error("ack_partially_understood", consumer=self.consumer,
                          sent=len(chunk), understood=int(result))
                await self._plain_ack(chunk)
            self.on_done(chunk)
        for chunk, why in refused:
            await self._isolate(chunk, why)
        if retry:
            self._requeue(retry)
            first = next(r for r in results if isinstance(r, Exception) and is_transient(r))
            raise first

    def _call(self, chunk: list[Op]) -> tuple[scripts.Script, list[str], list[Any]]:
        tk = self.bus.keys.topic(chunk[0].topic)
        args: list[Any] = [self.agent, self.consumer, int(time.time() * 1000),
                           tk.status_prefix, ""]
        packed = []
        for op in chunk:
            k = 0
            if op.error_type or op.error:
                k = len(args) + 1  # Lua's 1-based index of the error type
                message = f"{op.error_type}: {op.error}" if op.error_type else op.error
                args += [clean_text(op.error_type), status_message(message),
                         clean_text(op.error[:ERROR_LIMIT])]
            packed.append(op.packed(k))
        args[4] = " ".join(packed)
        return scripts.FINISH, [tk.stream, tk.dlq, tk.bad], args

    async def _isolate(self, chunk: list[Op], exc: BaseException) -> None:
        """A chunk the server refused: send its entries one by one; ack the hopeless."""
        log.error("ack_refused", consumer=self.consumer, entries=len(chunk),
                  error=describe(exc))
        singles: list[tuple[scripts.Script, list[str], list[Any]] | None] = []
        for op in chunk:
            try:
                singles.append(self._call([op]))
            except ValueError:
                singles.append(None)
        calls = [c for c in singles if c is not None]
        try:
            results = iter(await scripts.run_many(self.bus.redis, calls))
        except BaseException:
            self._requeue(chunk)
            raise
        hopeless: list[Op] = []
        for op, call in zip(chunk, singles, strict=True):
            result = next(results) if call is not None else ValueError("unpackable id")
            if isinstance(result, Exception):
                if is_transient(result):
                    self._requeue([op])
                    continue
                log.error("ack_fallback", consumer=self.consumer, topic=op.topic,
                          entry_id=op.entry_id, signal_id=op.signal_id, error=describe(result))
                hopeless.append(op)
            else:
                self.on_done([op])
        if hopeless:
            try:
                await self._plain_ack(hopeless)
            except BaseException:
                self._requeue(hopeless)
                raise
            self.on_done(hopeless)

    async def _plain_ack(self, ops: list[Op]) -> None:
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            for op in ops:
                pipe.xack(self.bus.keys.topic(op.topic).stream, self.agent, op.entry_id)
            await pipe.execute()

    def _requeue(self, ops: list[Op]) -> None:
        by_topic: dict[str, list[Op]] = {}
        for op in ops:
            by_topic.setdefault(op.topic, []).append(op)
        for topic, topic_ops in by_topic.items():
            self._ops.setdefault(topic, [])[:0] = topic_ops
