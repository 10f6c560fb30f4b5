"""Settings: keyword arguments, else ``SWARMBUS_*`` environment variables, else defaults.

This is the one place in the library that reads the environment.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "mask_url"]

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


_USERINFO = re.compile(r"(?P<head>//[^/@?#]*?:)[^/@?#]*@")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]password=)[^&#]*")


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe for logs and errors).

    Textual on purpose: it must work on URLs too broken to parse (bad port, odd scheme),
    which are exactly the ones that end up in error messages.
    """
    masked = _USERINFO.sub(lambda m: m["head"] + "***@", url, count=1)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + "***", masked)


def _seconds(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


class Settings(BaseSettings):
    """Everything a bus, worker or coordinator can be tuned with.

    Durations are seconds (``float``) or ``timedelta``; they are stored as seconds.
    """

    model_config = SettingsConfigDict(
        env_prefix="SWARMBUS_",
        frozen=True,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,  # the input may be a URL with a password in it
    )

    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    namespace: str = "swarmbus"
    concurrency: int = Field(default=64, ge=1, le=100_000)
    claim_idle: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff: float = Field(default=1.0, ge=0)
    retry_backoff_max: float = Field(default=60.0, ge=0)
    signal_ttl: float = Field(default=86_400.0, gt=0)
    stm_ttl: float = Field(default=86_400.0, gt=0)
    decision_retention: float = Field(default=604_800.0, gt=0)
    max_payload_bytes: int = Field(default=1_048_576, ge=256)
    #: Extra time a status record outlives its signal, so late readers still see the end state.
    status_grace: float = Field(default=3_600.0, ge=0)
    #: Entries read per XREADGROUP call (bounded by free handler slots).
    read_count: int = Field(default=100, ge=1, le=10_000)
    #: How long a blocking read waits before the loop checks for stop/reclaim work.
    block_timeout: float = Field(default=1.0, gt=0)
    #: Entries one reclaim pass may take over per topic.
    reclaim_budget: int = Field(default=100, ge=1)
    #: Seconds a stopping worker waits for in-flight handlers.
    shutdown_grace: float = Field(default=10.0, ge=0)
    #: Seconds a handler may run before its attempt counts as failed (``HandlerTimeout``);
    #: None for no limit. Async handlers are cancelled at the deadline.
    handler_timeout: float | None = Field(default=None, gt=0)
    log_format: Literal["console", "json"] | None = None
    log_level: str = "info"

    @field_validator(
        "claim_idle", "retry_backoff", "retry_backoff_max", "signal_ttl", "stm_ttl",
        "decision_retention", "status_grace", "block_timeout", "shutdown_grace",
        "handler_timeout", mode="before",
    )
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return _seconds(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE.fullmatch(value):
            raise ValueError(
                f"invalid namespace {value!r}: use 1-64 letters, digits, '_', '.' or '-'"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {"redis", "rediss", "unix", "memory"}:
            raise ValueError(
                f"unsupported redis url {mask_url(value)!r}: "
                "use redis://, rediss://, unix:// or memory://"
            )
        return value

    @property
    def masked_url(self) -> str:
        return mask_url(self.redis_url)

    def __repr_args__(self) -> Any:
        yield "redis_url", self.masked_url
        yield from super().__repr_args__()
