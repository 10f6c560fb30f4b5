"""Shared pieces of the ``swarmbus`` command: argument types, running against a bus,
output helpers, signal handling."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal as signals
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import BaseModel
from rich.text import Text

from .agents import Agent
from .bus import Bus, SignalStatus, connect
from .bus.keys import check_agent
from .cli_output import (
    json_line,
    make_console,
    status_lines,
)
from .errors import ConfigurationError
from .settings import Settings

log = structlog.get_logger("swarmbus.cli")


LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_ENTRY_ID = re.compile(r"^(\d+-\d+|\d{10,})$")


_LONGEST = 100 * 365 * 86400.0


class UsageError(Exception):
    """Bad command-line input: exit 2."""


class CommandFailed(Exception):
    """The command ran but the outcome is a failure (e.g. a target failed): exit 1."""


def duration(text: str) -> float:
    """Seconds from ``<number>[ms|s|m|h|d]`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use <number>[ms|s|m|h|d], e.g. 30s, 10m, 1h"
        )
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds > _LONGEST:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: over 100 years")
    return seconds


def _moment(text: str, error: str) -> timedelta | datetime:
    if _DURATION.match(text):
        return timedelta(seconds=duration(text))
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(error) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def since(text: str) -> timedelta | datetime | str:
    """A duration back from now, a stream entry id, or an ISO datetime (naive = UTC)."""
    if _ENTRY_ID.match(text.strip()):
        return text.strip()
    return _moment(text, f"invalid --since {text!r}: use a duration (10m), an entry id "
                         "(1712345678901-0) or an ISO datetime (2024-04-05T12:00:00Z)")


def moment(text: str) -> timedelta | datetime:
    """A duration back from now, or an ISO datetime (naive = UTC)."""
    return _moment(text, f"invalid time {text!r}: use a duration back from now (1h) "
                         "or an ISO datetime (2024-04-05T12:00:00Z)")


def period(text: str) -> float:
    """A duration above zero (windows, intervals)."""
    seconds = duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be above zero")
    return seconds


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def agent_name(text: str) -> str:
    try:
        return check_agent(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def load_data(spec: str | None) -> dict[str, Any]:
    """``--data``: JSON object text, ``@path`` to read it from a file, or ``-`` for stdin."""
    if spec is None:
        return {}
    if spec == "-":
        text = sys.stdin.read()
    elif spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"--data: cannot read {spec[1:]!r}: {exc.strerror}") from None
    else:
        text = spec
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--data must be a JSON object, got {type(data).__name__}")
    return data


def load_app(spec: str) -> list[Agent]:
    """The agents named by ``module:attr`` (an ``Agent`` or a list/tuple of them)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"invalid APP {spec!r}: use module:attr, e.g. myapp.agents:risk")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    agents = list(value) if isinstance(value, list | tuple) else [value]
    if not agents or not all(isinstance(a, Agent) for a in agents):
        raise UsageError(
            f"{spec!r} is a {type(value).__name__}, not an Agent or a list of Agents"
        )
    return agents


def with_bus(
    settings: Settings, func: Callable[[Bus], Awaitable[int]], *, patient: bool = False
) -> int:
    """Run ``func(bus)`` in an event loop with a connected bus that is always closed.

    :param patient: for services (``run``, ``coordinator``, ``tail -f``): when Redis is
        not there yet, log and keep trying instead of failing (they ride out outages
        later on too). One-shot commands fail at once with a one-line error.
    """

    async def go() -> int:
        bus = connect(settings=settings)
        try:
            if patient:
                await _wait_for_redis(bus)
            else:
                await bus.ping()
            return await func(bus)
        finally:
            with anyio.CancelScope(shield=True):
                await bus.close()

    return anyio.run(go)


async def _wait_for_redis(bus: Bus) -> None:
    from .bus.backoff import Backoff
    from .bus.faults import is_transient, ride_out

    backoff = Backoff(cap=10.0)
    while True:
        try:
            await bus.ping()
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            await ride_out(exc, backoff, log, "connect", redis=settings_url(bus))


def settings_url(bus: Bus) -> str:
    return bus.settings.masked_url


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _print(lines: Iterable[Text]) -> None:
    console = make_console()
    for line in lines:
        console.print(line)


def _print_rows(lines: Sequence[Text], empty: str) -> None:
    """A table on stdout, or ``empty`` on stderr when it has no rows."""
    if len(lines) <= 1:
        print(empty, file=sys.stderr)
    else:
        _print(lines)


def _show_status(status: SignalStatus, as_json: bool) -> None:
    if as_json:
        _out(json_line(status))
    else:
        _print(status_lines(status))


async def _stop_on_signals(
    stop: Callable[[], None],
    scope: anyio.CancelScope,
    name: str,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGINT/SIGTERM: ``stop()`` (graceful); a second one cancels ``scope``."""
    with anyio.open_signal_receiver(signals.SIGINT, signals.SIGTERM) as received:
        task_status.started()
        stopping = False
        async for signum in received:
            if stopping:
                log.warning("coordinator_killed", coordinator=name, signal=int(signum))
                scope.cancel()
                return
            stopping = True
            log.info("coordinator_stopping", coordinator=name, signal=int(signum))
            stop()


@contextmanager
def _counting(action: str) -> Iterator[Callable[[int], None]]:
    """A running record count on stderr (on a terminal only)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = make_console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description} {task.completed} records"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(action, total=None)
        yield lambda done: bar.update(task, completed=done)


def show(item: BaseModel, lines: Callable[[Any], Iterable[Text]], as_json: bool) -> None:
    """One object to stdout: a JSON line, or its human lines."""
    if as_json:
        _out(json_line(item))
    else:
        _print(lines(item))


def emit(items: Sequence[BaseModel], table: Callable[[Any], Sequence[Text]], as_json: bool,
         empty: str) -> None:
    """Data to stdout: one JSON object per line, or the human table (``empty`` on stderr)."""
    if as_json:
        for item in items:
            _out(json_line(item))
    else:
        _print_rows(table(items), empty)
