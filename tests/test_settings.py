"""Settings: keyword arguments, then SWARMBUS_* environment, then defaults; no leaked passwords."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import ValidationError

import swarmbus
from swarmbus import ConfigurationError, Settings
from swarmbus.settings import mask_url

SECRET = "s3cr3t-pa55"
DURATIONS = [
    "claim_idle",
    "retry_backoff",
    "retry_backoff_max",
    "signal_ttl",
    "stm_ttl",
    "decision_retention",
    "status_grace",
    "block_timeout",
    "shutdown_grace",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SWARMBUS_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("SWARMBUS_"):
            monkeypatch.delenv(name)
    yield


def _close(bus: swarmbus.Bus) -> None:
    asyncio.run(bus.close())


# -- sources ------------------------------------------------------------------------------


def test_defaults_match_the_spec() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.namespace == "swarmbus"
    assert settings.concurrency == 64
    assert settings.claim_idle == 30.0
    assert settings.max_attempts == 5
    assert settings.retry_backoff == 1.0
    assert settings.retry_backoff_max == 60.0
    assert settings.signal_ttl == 86_400.0
    assert settings.stm_ttl == 86_400.0
    assert settings.decision_retention == 604_800.0
    assert settings.max_payload_bytes == 1_048_576
    assert settings.log_level == "info"


def test_keyword_arguments() -> None:
    settings = Settings(
        redis_url="rediss://cache.example:6380/2",
        namespace="fleet-a",
        concurrency=8,
        max_attempts=3,
        max_payload_bytes=4096,
        log_format="json",
    )
    assert settings.redis_url == "rediss://cache.example:6380/2"
    assert settings.namespace == "fleet-a"
    assert settings.concurrency == 8
    assert settings.max_attempts == 3
    assert settings.max_payload_bytes == 4096
    assert settings.log_format == "json"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMBUS_REDIS_URL", "redis://env-host:6390/3")
    monkeypatch.setenv("SWARMBUS_NAMESPACE", "from-env")
    monkeypatch.setenv("SWARMBUS_CONCURRENCY", "12")
    monkeypatch.setenv("SWARMBUS_CLAIM_IDLE", "2.5")
    monkeypatch.setenv("SWARMBUS_SIGNAL_TTL", "3600")
    monkeypatch.setenv("SWARMBUS_MAX_PAYLOAD_BYTES", "2048")
    monkeypatch.setenv("SWARMBUS_LOG_FORMAT", "console")
    monkeypatch.setenv("SWARMBUS_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.redis_url == "redis://env-host:6390/3"
    assert settings.namespace == "from-env"
    assert settings.concurrency == 12
    assert settings.claim_idle == 2.5
    assert settings.signal_ttl == 3600.0
    assert settings.max_payload_bytes == 2048
    assert settings.log_format == "console"
    assert settings.log_level == "debug"


def test_keyword_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMBUS_NAMESPACE", "from-env")
    monkeypatch.setenv("SWARMBUS_CONCURRENCY", "12")
    settings = Settings(namespace="from-kwargs")
    assert settings.namespace == "from-kwargs"
    assert settings.concurrency == 12


def test_invalid_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMBUS_CONCURRENCY", "lots")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "concurrency" in str(info.value)


def test_connect_reads_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMBUS_REDIS_URL", "memory://settings-env")
    monkeypatch.setenv("SWARMBUS_NAMESPACE", "env-ns")
    bus = swarmbus.connect()
    try:
        assert bus.settings.redis_url == "memory://settings-env"
        assert bus.settings.namespace == "env-ns"
    finally:
        _close(bus)


def test_misspelt_keyword_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(namepsace="typo")
    assert "namepsace" in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.namespace = "other"  # type: ignore[misc]
    assert settings.namespace == "swarmbus"


# -- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", DURATIONS)
def test_timedelta_durations_are_stored_as_seconds(field: str) -> None:
    settings = Settings(**{field: timedelta(minutes=1, milliseconds=500)})
    value = getattr(settings, field)
    assert isinstance(value, float)
    assert value == 60.5


@pytest.mark.parametrize("field", DURATIONS)
def test_float_durations_are_seconds(field: str) -> None:
    assert getattr(Settings(**{field: 7}), field) == 7.0


def test_negative_or_zero_durations_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(claim_idle=timedelta(seconds=0))
    assert "claim_idle" in str(info.value)
    with pytest.raises(ValidationError) as info:
        Settings(retry_backoff=timedelta(seconds=-1))
    assert "retry_backoff" in str(info.value)


# -- validation messages ------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["", "has space", "{braces}", "a:b", "-lead", "x" * 65])
def test_invalid_namespace_is_refused_with_a_clear_message(namespace: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(namespace=namespace)
    message = str(info.value)
    assert "namespace" in message
    assert "invalid namespace" in message
    assert "letters, digits" in message


@pytest.mark.parametrize("namespace", ["a", "fleet-a", "Fleet_1.prod", "x" * 64])
def test_valid_namespaces(namespace: str) -> None:
    assert Settings(namespace=namespace).namespace == namespace


def test_namespace_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(namespace="fleet\n")


@pytest.mark.parametrize(
    "url", ["ftp://x", "http://localhost:6379", "localhost:6379", "", "redis:/x", "tcp://h"]
)
def test_unsupported_url_scheme_is_refused_with_a_clear_message(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=url)
    message = str(info.value)
    assert "unsupported redis url" in message
    for scheme in ("redis://", "rediss://", "unix://", "memory://"):
        assert scheme in message


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379/0", "REDIS://h", "rediss://h:6380", "unix:///tmp/r.sock", "memory://x"],
)
def test_supported_url_schemes(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url


# -- passwords ----------------------------------------------------------------------------


def test_password_is_masked_in_repr_and_masked_url() -> None:
    settings = Settings(redis_url=f"redis://user:{SECRET}@cache.example:6379/0")
    assert settings.redis_url == f"redis://user:{SECRET}@cache.example:6379/0"  # still usable
    assert settings.masked_url == "redis://user:***@cache.example:6379/0"
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "redis://user:***@cache.example:6379/0" in repr(settings)


@pytest.mark.parametrize(
    "url, masked",
    [
        (f"redis://u:{SECRET}@h:6379/0", "redis://u:***@h:6379/0"),
        (f"redis://:{SECRET}@h/1", "redis://:***@h/1"),
        (
            f"rediss://u:{SECRET}@h:6380/0?ssl_cert_reqs=none",
            "rediss://u:***@h:6380/0?ssl_cert_reqs=none",
        ),
        (f"unix://:{SECRET}@/tmp/redis.sock?db=1", "unix://:***@/tmp/redis.sock?db=1"),
    ],
)
def test_mask_url_hides_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert SECRET not in mask_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://h",
        "rediss://user@cache.example:6380/1",
        "unix:///var/run/redis.sock?db=2",
        "memory://tests",
        "redis://h:6379/0?socket_timeout=5",
    ],
)
def test_mask_url_without_password_is_unchanged(url: str) -> None:
    assert mask_url(url) == url
    assert Settings(redis_url=url).masked_url == url


def test_mask_url_of_unparseable_url_does_not_echo_it() -> None:
    masked = mask_url(f"redis://u:{SECRET}@[::1")
    assert SECRET not in masked


def test_mask_url_hides_a_password_in_the_query() -> None:
    settings = Settings(redis_url=f"redis://h:6379/0?password={SECRET}")
    assert SECRET not in settings.masked_url
    assert SECRET not in repr(settings)


def test_mask_url_keeps_ipv6_brackets() -> None:
    assert mask_url(f"redis://:{SECRET}@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


@pytest.mark.parametrize("via", ["kwargs", "env", "connect"])
def test_unsupported_url_error_does_not_leak_the_password(
    via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"ftp://user:{SECRET}@files.example/x"
    with pytest.raises(ValueError) as info:
        if via == "kwargs":
            Settings(redis_url=url)
        elif via == "env":
            monkeypatch.setenv("SWARMBUS_REDIS_URL", url)
            Settings()
        else:
            swarmbus.connect(url)
    assert "unsupported redis url" in str(info.value)
    assert SECRET not in str(info.value)


def test_other_setting_errors_do_not_show_the_url() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=f"redis://u:{SECRET}@h:6379/0", namespace="bad namespace")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_bad_port_is_a_configuration_error(port: str) -> None:
    url = f"redis://u:{SECRET}@h:{port}/0"
    assert SECRET not in repr(Settings(redis_url=url))
    with pytest.raises(ConfigurationError) as info:
        swarmbus.connect(url)
    assert SECRET not in str(info.value)


# -- connect ------------------------------------------------------------------------------


def test_connect_repr_hides_the_password() -> None:
    bus = swarmbus.connect("redis://u:secret@127.0.0.1:1/0")
    try:
        assert "secret" not in repr(bus)
        assert "127.0.0.1:1" in repr(bus)
        assert "secret" not in repr(bus.settings)
    finally:
        _close(bus)


def test_connect_with_unsupported_scheme_raises_configuration_error() -> None:
    with pytest.raises(swarmbus.ConfigurationError) as info:
        swarmbus.connect("ftp://x")
    assert isinstance(info.value, swarmbus.SwarmbusError)
    assert "unsupported redis url" in str(info.value)


def test_connect_with_invalid_override_raises_configuration_error() -> None:
    with pytest.raises(swarmbus.ConfigurationError) as info:
        swarmbus.connect("memory://x", namespace="no spaces allowed")
    assert "namespace" in str(info.value)


def test_connect_overrides_fields_of_given_settings() -> None:
    base = Settings(redis_url="memory://base", namespace="base-ns", concurrency=3)
    bus = swarmbus.connect("memory://other", settings=base, max_attempts=9)
    try:
        assert bus.settings.redis_url == "memory://other"
        assert bus.settings.namespace == "base-ns"
        assert bus.settings.concurrency == 3
        assert bus.settings.max_attempts == 9
    finally:
        _close(bus)
