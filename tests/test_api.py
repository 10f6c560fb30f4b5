"""The public surface of ``import swarmbus``: names, exception tree, small helpers."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest

import swarmbus
from swarmbus import errors

PUBLIC = [
    "Agent",
    "Bus",
    "BusConnectionError",
    "BusResponseError",
    "ConfigurationError",
    "Conflict",
    "Consumer",
    "Context",
    "Coordinator",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "EffectConflict",
    "GroupInfo",
    "HandlerControl",
    "HandlerTimeout",
    "InvalidData",
    "InvalidSignal",
    "NotFound",
    "PayloadTooLarge",
    "Reject",
    "Retry",
    "Settings",
    "Severity",
    "Signal",
    "SignalNotFound",
    "SignalStatus",
    "StateConflict",
    "StatusState",
    "SwarmbusError",
    "TargetStatus",
    "WaitTimeout",
    "Worker",
    "__version__",
    "connect",
]

EXCEPTIONS = [
    name
    for name in PUBLIC
    if isinstance(getattr(swarmbus, name), type)
    and issubclass(getattr(swarmbus, name), BaseException)
]


def test_all_is_pinned() -> None:
    assert sorted(swarmbus.__all__) == PUBLIC
    assert len(set(swarmbus.__all__)) == len(swarmbus.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("swarmbus")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from swarmbus import {name}", namespace)
    assert namespace[name] is getattr(swarmbus, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from swarmbus import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def test_version_is_a_string() -> None:
    assert isinstance(swarmbus.__version__, str)
    assert swarmbus.__version__.count(".") >= 1


def test_exceptions_are_found() -> None:
    # Guards the parametrisation below against silently testing nothing.
    assert len(EXCEPTIONS) == 18
    assert set(EXCEPTIONS) == set(errors.__all__)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_of_the_errors_module_derives_from_swarmbus_error(name: str) -> None:
    assert issubclass(getattr(errors, name), swarmbus.SwarmbusError)


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_every_exception_derives_from_swarmbus_error(name: str) -> None:
    assert issubclass(getattr(swarmbus, name), swarmbus.SwarmbusError)
    assert getattr(swarmbus, name) is getattr(errors, name)


@pytest.mark.parametrize(
    "name, builtin",
    [
        ("ConfigurationError", ValueError),
        ("InvalidSignal", ValueError),
        ("BusConnectionError", ConnectionError),
        ("NotFound", LookupError),
        ("WaitTimeout", TimeoutError),
        ("HandlerTimeout", TimeoutError),
    ],
)
def test_exceptions_are_also_the_matching_builtin(name: str, builtin: type) -> None:
    assert issubclass(getattr(swarmbus, name), builtin)


@pytest.mark.parametrize(
    "child, parent",
    [
        ("PayloadTooLarge", "InvalidSignal"),
        ("DecodeError", "InvalidSignal"),
        ("SignalNotFound", "NotFound"),
        ("StateConflict", "Conflict"),
        ("EffectConflict", "Conflict"),
        ("Retry", "HandlerControl"),
        ("Reject", "HandlerControl"),
        ("InvalidData", "Reject"),
    ],
)
def test_exception_tree(child: str, parent: str) -> None:
    assert issubclass(getattr(swarmbus, child), getattr(swarmbus, parent))


def test_wait_timeout_is_a_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise swarmbus.WaitTimeout("gave up")
    assert issubclass(swarmbus.WaitTimeout, TimeoutError)


def test_retry_delay_from_timedelta_is_seconds() -> None:
    assert swarmbus.Retry(timedelta(seconds=2)).delay == 2.0
    assert swarmbus.Retry(timedelta(milliseconds=1500)).delay == 1.5
    assert swarmbus.Retry(3).delay == 3
    assert swarmbus.Retry().delay is None


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -float("inf"), -1.0, -1e-9])
def test_retry_refuses_delays_that_are_not_finite_seconds(delay: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        swarmbus.Retry(delay)


@pytest.mark.parametrize("delay", ["1", True, [1]])
def test_retry_refuses_delays_that_are_not_numbers(delay: object) -> None:
    with pytest.raises(TypeError, match="seconds or a timedelta"):
        swarmbus.Retry(delay)  # type: ignore[arg-type]


def test_retry_and_reject_carry_their_reason() -> None:
    assert swarmbus.Retry(1, reason="rate limited").reason == "rate limited"
    assert "rate limited" in str(swarmbus.Retry(1, reason="rate limited"))
    assert swarmbus.Reject("bad payload").reason == "bad payload"
    assert str(swarmbus.Reject("bad payload")) == "bad payload"
    assert swarmbus.Reject().reason


def test_error_attributes() -> None:
    too_large = swarmbus.PayloadTooLarge(2000, 1000)
    assert (too_large.size, too_large.limit) == (2000, 1000)
    assert swarmbus.DecodeError("no 'v'").reason == "no 'v'"
    missing = swarmbus.SignalNotFound("abc")
    assert missing.signal_id == "abc"
    assert "abc" in str(missing)
