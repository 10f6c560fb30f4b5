"""The ``Signal`` model and signal ids."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

__all__ = [
    "AGENT_NAME",
    "SIGNAL_ID",
    "TOPIC_NAME",
    "Severity",
    "Signal",
    "derive_id",
    "new_id",
]

#: Topic (signal type) names.
TOPIC_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
#: Agent names (also consumer group names).
AGENT_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
#: Signal ids: our own are 26-character ULIDs; producers may bring their own.
SIGNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

TopicName = Annotated[str, StringConstraints(pattern=TOPIC_NAME)]
AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME)]
SignalId = Annotated[str, StringConstraints(pattern=SIGNAL_ID)]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DEFAULT_TTL = timedelta(seconds=86_400)
_ZERO = timedelta(0)


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


_last_ms = -1
_last_rand = 0


def new_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by creation time.

    Monotonic within a process: ids made in the same millisecond continue from the
    previous random part, so they sort in the order they were made.
    """
    global _last_ms, _last_rand
    ms = int((time.time() if now is None else now) * 1000)
    if ms == _last_ms and _last_rand < (1 << 80) - 1:
        _last_rand += 1
    else:
        _last_ms, _last_rand = ms, int.from_bytes(os.urandom(10), "big") >> 1
    return _b32(ms, 10) + _b32(_last_rand, 16)


def derive_id(*parts: str) -> str:
    """A deterministic id from ``parts`` (same parts, same id), shaped like a ULID.

    Used for effects inside a handler: a re-run after a crash derives the same ids, and
    the bus's idempotent publish drops the duplicates.
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=17).digest()
    return "D" + _b32(int.from_bytes(digest, "big"), 25)


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.tzinfo is UTC or value.utcoffset() == _ZERO:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range once converted to UTC") from None


class Signal(BaseModel):
    """A typed message from one agent to others. Frozen: build a new one to change it."""

    # NaN/Infinity are written as bare tokens, so the codec can spot and refuse them
    # instead of pydantic silently writing null.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    id: SignalId = Field(default_factory=new_id)
    type: TopicName
    source: AgentName
    targets: list[AgentName] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    severity: Severity = Severity.medium
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    context: dict[str, Any] = Field(default_factory=dict)
    recommended_action: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    expires_at: datetime | None = None
    causation_id: str | None = None
    correlation_id: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("created_at", "expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[str]) -> list[str]:
        if len(value) > 1 and len(set(value)) != len(value):
            return list(dict.fromkeys(value))
        return value

    @property
    def expires(self) -> datetime:
        """``expires_at``; a signal not yet published without one gets the 24 h default.

        Publishing fills ``expires_at`` from ``Settings.signal_ttl`` when it is None, so
        every signal read from a stream carries it.
        """
        if self.expires_at is not None:
            return self.expires_at
        try:
            return self.created_at + DEFAULT_TTL
        except OverflowError:
            return datetime.max.replace(tzinfo=UTC)

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires

    def with_ttl(self, ttl: float | timedelta) -> Signal:
        """A copy that expires ``ttl`` after its creation."""
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        try:
            expires = self.created_at + timedelta(seconds=seconds)
        except OverflowError:
            expires = datetime.max.replace(tzinfo=UTC)
        return self.model_copy(update={"expires_at": expires})
