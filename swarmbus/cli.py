"""The ``swarmbus`` command: parse, build ``Settings``, configure logging, call the library.

Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted. Errors are one
line on stderr (``swarmbus: error: ...``), with a traceback only under ``--debug``.
Data goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal as signals
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import ValidationError
from rich.text import Text

from . import __version__
from .agents import Agent, Worker, heartbeats
from .agents.decisions import decision_agent
from .bus import Bus, Severity, Signal, SignalStatus, StatusState, connect
from .bus.keys import check_agent
from .cli_output import (
    agent_stats_table,
    anomalies_table,
    chain_table,
    checkpoints_table,
    dead_letter_lines,
    dead_letters_table,
    decision_lines,
    decision_stats_table,
    decisions_table,
    groups_table,
    heartbeats_table,
    held_work_table,
    json_line,
    make_console,
    pattern_lines,
    patterns_table,
    signal_line,
    state_lines,
    status_lines,
)
from .coordinator import Coordinator, analytics
from .coordinator.backup import export_backup, import_backup
from .coordinator.registry import discover_agents, held_work
from .errors import ConfigurationError, NotFound, SwarmbusError, WaitTimeout
from .logging import configure_logging
from .settings import Settings

__all__ = ["main"]

log = structlog.get_logger("swarmbus.cli")

LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: ``<ms>-<seq>``, or bare milliseconds (10+ digits: far too long to mean seconds).
_ENTRY_ID = re.compile(r"^(\d+-\d+|\d{10,})$")
_LONGEST = 100 * 365 * 86400.0


class UsageError(Exception):
    """Bad command-line input: exit 2."""


class CommandFailed(Exception):
    """The command ran but the outcome is a failure (e.g. a target failed): exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# -- argument types ------------------------------------------------------------------------


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


def since(text: str) -> timedelta | datetime | str:
    """A duration back from now, a stream entry id, or an ISO datetime (naive = UTC)."""
    if _ENTRY_ID.match(text.strip()):
        return text.strip()
    if _DURATION.match(text):
        return timedelta(seconds=duration(text))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid --since {text!r}: use a duration (10m), an entry id (1712345678901-0) "
            "or an ISO datetime (2024-04-05T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def moment(text: str) -> timedelta | datetime:
    """A duration back from now, or an ISO datetime (naive = UTC)."""
    if _DURATION.match(text):
        return timedelta(seconds=duration(text))
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use a duration back from now (1h) "
            "or an ISO datetime (2024-04-05T12:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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


# -- running commands ----------------------------------------------------------------------


def with_bus(settings: Settings, func: Callable[[Bus], Awaitable[int]]) -> int:
    """Run ``func(bus)`` in an event loop with a connected bus that is always closed."""

    async def go() -> int:
        bus = connect(settings=settings)
        try:
            await bus.ping()
            return await func(bus)
        finally:
            with anyio.CancelScope(shield=True):
                await bus.close()

    return anyio.run(go)


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


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    agents = [agent for spec in args.apps for agent in load_app(spec)]

    async def go(bus: Bus) -> int:
        worker = Worker(bus, agents, concurrency=args.concurrency)
        await worker.run(handle_signals=True)
        return 0

    return with_bus(settings, go)


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    fields: dict[str, Any] = {
        "type": args.type,
        "source": args.source,
        "targets": [t.strip() for t in (args.to or "").split(",") if t.strip()],
        "data": load_data(args.data),
        "severity": args.severity,
    }
    try:
        signal = Signal(**fields)
    except ValidationError as exc:
        flags = {"type": "TYPE", "source": "--source", "targets": "--to", "data": "--data"}
        first = exc.errors()[0]
        name = flags.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else ""
        raise UsageError(f"invalid {name}: {first['msg']}") from None
    if args.ttl is not None:
        signal = signal.with_ttl(args.ttl)

    async def go(bus: Bus) -> int:
        signal_id = await bus.publish(signal)
        _out(signal_id)
        if args.wait is None:
            return 0
        try:
            status = await bus.wait(signal_id, timeout=args.wait, topic=signal.type)
        except WaitTimeout:
            _show_status(await bus.status(signal_id, topic=signal.type), False)
            raise
        _show_status(status, False)
        bad = [f"{name} {t.state.value}" for name, t in status.targets.items()
               if t.state is not StatusState.processed]
        if bad:
            raise CommandFailed(f"signal {signal_id} not processed by every target: "
                                + ", ".join(bad))
        return 0

    return with_bus(settings, go)


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    console = make_console()

    async def go(bus: Bus) -> int:
        stream = bus.tail(args.topics or None, since=args.since, last=args.last,
                          follow=args.follow)
        async for signal in stream:
            if args.source and signal.source != args.source:
                continue
            if args.target and args.target not in signal.targets:
                continue
            if args.json:
                _out(json_line(signal))
            else:
                console.print(signal_line(signal))
        return 0

    return with_bus(settings, go)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        _show_status(await bus.status(args.id), args.json)
        return 0

    return with_bus(settings, go)


def cmd_agents(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        beats = await heartbeats(bus)
        with bus.errors():
            held = [h for h in await held_work(bus, beats) if not h.alive]
        if args.json:
            for beat in beats:
                _out(json_line(beat))
            for h in held:
                _out(json_line({"kind": "held", **h.model_dump(mode="json")}))
            return 0
        _print_rows(heartbeats_table(beats),
                    f"no consumers seen in namespace {settings.namespace!r}")
        if held:
            if beats:
                _out("")
            _print(held_work_table(held))
        return 0

    return with_bus(settings, go)


def cmd_groups(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        groups = await bus.groups(args.topic)
        if args.json:
            for group in groups:
                _out(json_line(group))
        else:
            _print_rows(groups_table(groups), "no consumer groups")
        return 0

    return with_bus(settings, go)


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        letters = await bus.dead_letters(args.topic, limit=args.limit)
        if args.json:
            for dl in letters:
                _out(json_line(dl))
        else:
            _print_rows(dead_letters_table(letters), f"no dead letters on {args.topic}")
        return 0

    return with_bus(settings, go)


def cmd_dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        hint = f"(see: swarmbus dlq list {args.topic})"
        if _ENTRY_ID.match(args.id):
            try:
                letter = await bus.dead_letter(args.topic, args.id)
            except NotFound as exc:
                raise NotFound(f"{exc} {hint}") from None
        else:  # a signal id: dead letters are keyed by entry id, so scan for it
            letters = await bus.dead_letters(args.topic, limit=1_000_000)
            found = [dl for dl in letters if dl.signal is not None and dl.signal.id == args.id]
            if not found:
                raise NotFound(f"no dead letter {args.id!r} on {args.topic} {hint}")
            letter = found[0]
        if args.json:
            _out(json_line(letter))
        else:
            _print(dead_letter_lines(letter))
        return 0

    return with_bus(settings, go)


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        moved = await _replay(bus, args.topic, args.ids or None)
        _out(f"replayed {moved} dead letter{'s' * (moved != 1)} of {args.topic}")
        return 0

    return with_bus(settings, go)


def cmd_dlq_purge(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        purged = await bus.purge_dead_letters(args.topic)
        _out(f"purged {purged} dead letter{'s' * (purged != 1)} of {args.topic}")
        return 0

    return with_bus(settings, go)


async def _replay(bus: Bus, topic: str, ids: list[str] | None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = make_console(stderr=True)
    with Progress(TextColumn("replaying {task.description}"), BarColumn(),
                  MofNCompleteColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(topic, total=None)
        return await bus.replay_dead_letters(
            topic, ids, progress=lambda done, total: bar.update(task, completed=done,
                                                                total=total),
        )


# -- memory --------------------------------------------------------------------------------


def _check_owner(decision_id: str, agent: str) -> None:
    owner = decision_agent(decision_id)
    if owner is not None and owner != agent:
        raise UsageError(f"decision {decision_id!r} belongs to agent {owner!r}, not {agent!r}: "
                         f"use --agent {owner}")


def cmd_memory_decisions(args: argparse.Namespace, settings: Settings) -> int:
    one = args.id or args.chain
    filters = {"--type": args.type, "--since": args.since, "--until": args.until,
               "--success/--failed": args.success, "--limit": args.limit}
    if one is not None:
        given = [flag for flag, value in filters.items() if value is not None]
        if given:
            which = "--id" if args.id else "--chain"
            raise UsageError(f"{which} picks decisions by id: {', '.join(given)} cannot be "
                             "combined with it")
        _check_owner(one, args.agent)
    until = args.until
    if isinstance(until, timedelta):
        until = datetime.now(UTC) - until

    async def go(bus: Bus) -> int:
        memory = bus.memory(args.agent)
        if args.id:
            decision = await memory.decision(args.id)
            if args.json:
                _out(json_line(decision))
            else:
                _print(decision_lines(decision))
            return 0
        if args.chain:
            chain = await memory.chain(args.chain)
            if args.json:
                for d in chain:
                    _out(json_line(d))
            else:
                _print(chain_table(chain, args.chain))
            return 0
        found = await memory.decisions(
            decision_type=args.type, since=args.since, until=until, success=args.success,
            limit=50 if args.limit is None else args.limit,
        )
        if args.json:
            for d in found:
                _out(json_line(d))
        else:
            matching = " matching the filters" if any(
                v is not None for f, v in filters.items() if f != "--limit") else ""
            _print_rows(decisions_table(found), f"no decisions of {args.agent!r}{matching}")
        return 0

    return with_bus(settings, go)


def cmd_memory_patterns(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        memory = bus.memory(args.agent)
        if args.id:
            pattern = await memory.pattern(args.id)
            if args.json:
                _out(json_line(pattern))
            else:
                _print(pattern_lines(pattern))
            return 0
        found = await memory.patterns(decision_type=args.type,
                                      min_confidence=args.min_confidence,
                                      include_shared=args.shared, limit=args.limit)
        if args.json:
            for p in found:
                _out(json_line(p))
        else:
            _print_rows(patterns_table(found, args.agent),
                        f"no patterns of {args.agent!r} (the coordinator learns them from "
                        "outcomes: swarmbus coordinator)")
        return 0

    return with_bus(settings, go)


def cmd_memory_stats(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        memory = bus.memory(args.agent)
        if args.type is not None:
            rows = [await memory.stats(window=args.window, decision_type=args.type)]
        else:
            with bus.errors():
                types = sorted(t.decode() for t in await bus.redis.smembers(
                    bus.keys.memory(args.agent).types))
            rows = [await memory.stats(window=args.window)]
            for dtype in types:
                row = await memory.stats(window=args.window, decision_type=dtype)
                if row.count or row.outcomes:
                    rows.append(row)
        if args.json:
            for row in rows:
                _out(json_line(row))
        else:
            _print(decision_stats_table(rows))
        return 0

    return with_bus(settings, go)


def cmd_memory_state(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        state = await bus.memory(args.agent).state.get()
        if args.json:
            _out(json_line(state))
        else:
            _print(state_lines(args.agent, state))
        return 0

    return with_bus(settings, go)


def cmd_memory_checkpoints(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        found = await bus.memory(args.agent).state.checkpoints()
        if args.json:
            for c in found:
                _out(json_line(c))
        else:
            _print_rows(checkpoints_table(found), f"agent {args.agent!r} has no checkpoints")
        return 0

    return with_bus(settings, go)


def cmd_memory_rollback(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        store = bus.memory(args.agent).state
        kept = await store.checkpoints()  # newest first
        chosen = next((c for c in kept if args.checkpoint in (None, c.id)), None)
        # the latest by default, named, and restored exactly (not whatever is latest later)
        state = await store.rollback(chosen.id if chosen else args.checkpoint)
        if args.json:
            _out(json_line(state))
        elif chosen is None:  # only when it vanished between listing and restoring
            _out(f"rolled back {args.agent} to checkpoint {args.checkpoint}: "
                 f"state is now version {state.version}")
        else:
            _out(f"rolled back {args.agent} to checkpoint {chosen.id} "
                 f"({chosen.label or 'no label'}, version {chosen.version}): "
                 f"state is now version {state.version}")
        return 0

    return with_bus(settings, go)


# -- coordinator, stats, backup ------------------------------------------------------------


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


def cmd_coordinator(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        coordinator = Coordinator(
            bus, name=args.name, checkpoint_every=args.checkpoint_every,
            janitor_every=args.janitor_every, analytics_every=args.analytics_every,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(_stop_on_signals, coordinator.stop, tg.cancel_scope,
                           coordinator.name)
            await coordinator.run()
            tg.cancel_scope.cancel()
        return 0

    return with_bus(settings, go)


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        with bus.errors():
            agents = [args.agent] if args.agent else await discover_agents(bus)
            rows = await analytics.report(bus, agents, window=args.window)
            recent = await analytics.anomalies(bus, limit=100)
        cutoff = datetime.now(UTC) - timedelta(seconds=args.window)
        recent = [a for a in recent
                  if a.at >= cutoff and (args.agent is None or a.agent == args.agent)]
        if args.json:
            for row in rows:
                _out(json_line(row))
            for a in recent:
                _out(json_line({"kind": "anomaly", **a.model_dump(mode="json")}))
            return 0
        if not rows:
            print(f"no agents in namespace {settings.namespace!r}", file=sys.stderr)
        else:
            _print(agent_stats_table(rows))
        if recent:
            if rows:
                _out("")
            _print(anomalies_table(recent))
        return 0

    return with_bus(settings, go)


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


def cmd_backup_export(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        try:  # a file problem is named as one (not as a Redis error)
            open(args.file, "wb").close()  # noqa: ASYNC230 - a quick local check
        except OSError as exc:
            raise CommandFailed(f"cannot write {args.file}: {exc.strerror or exc}") from None
        with _counting("exporting") as progress:
            written = await export_backup(bus, args.file, progress=progress)
        _out(f"exported {written} record{'s' * (written != 1)} to {args.file}")
        return 0

    return with_bus(settings, go)


def cmd_backup_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        open(args.file, "rb").close()
    except OSError as exc:
        raise CommandFailed(f"{args.file}: cannot read backup: {exc.strerror or exc}") from None

    async def go(bus: Bus) -> int:
        with _counting("importing") as progress:
            restored = await import_backup(bus, args.file, merge=args.merge, progress=progress)
        _out(f"imported {restored} record{'s' * (restored != 1)} from {args.file}")
        return 0

    return with_bus(settings, go)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    try:
        demo = importlib.import_module("swarmbus.demo")
    except ImportError as exc:
        raise CommandFailed(f"the demo is not available in this installation: {exc}") from exc
    return int(demo.main(settings, seconds=args.seconds, use_redis=args.redis is not None))


# -- the parser ----------------------------------------------------------------------------


def _command(
    sub: Any, name: str, summary: str, examples: Sequence[str], func: Any = None
) -> _Parser:
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    parser: _Parser = sub.add_parser(
        name, help=summary, description=summary, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="swarmbus",
        description="Coordination bus and memory for fleets of cooperating agents.",
        epilog="examples:\n  swarmbus run myapp.agents:risk\n"
               "  swarmbus publish PING --to risk --data '{\"n\": 1}' --wait 10\n"
               "  swarmbus tail -f\n\nrun 'swarmbus COMMAND --help' for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--redis", metavar="URL",
                        help="Redis URL (default: $SWARMBUS_REDIS_URL or "
                             "redis://localhost:6379/0; memory:// for the embedded backend)")
    parser.add_argument("--namespace", metavar="NS",
                        help="key prefix (default: $SWARMBUS_NAMESPACE or swarmbus)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        help="log level on stderr (default: $SWARMBUS_LOG_LEVEL or info)")
    parser.add_argument("--version", action="version", version=f"swarmbus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "run", "Run workers for agents until SIGINT/SIGTERM.", [
        "swarmbus run myapp.agents:risk",
        "swarmbus run myapp.agents:risk myapp.agents:executor --concurrency 16",
    ], cmd_run)
    p.add_argument("apps", nargs="+", metavar="APP",
                   help="module:attr naming an Agent or a list of Agents")
    p.add_argument("--concurrency", type=_count(1), metavar="N",
                   help="in-flight handlers in this process (default: $SWARMBUS_CONCURRENCY)")

    p = _command(sub, "publish", "Publish a signal and print its id.", [
        "swarmbus publish WHALE_ACTIVITY --to risk-manager --data '{\"usd\": 2500000}'",
        "swarmbus publish PING --severity high --ttl 10m --wait 30",
        "echo '{\"n\": 1}' | swarmbus publish PING --data -",
    ], cmd_publish)
    p.add_argument("type", metavar="TYPE", help="signal type (the topic)")
    p.add_argument("--source", default="cli", metavar="S", help="publishing agent (default: cli)")
    p.add_argument("--to", metavar="A,B", help="comma-separated targets (default: every "
                   "agent subscribed to TYPE)")
    p.add_argument("--data", metavar="JSON|@file|-", help="JSON object payload")
    p.add_argument("--severity", choices=[s.value for s in Severity], default="medium")
    p.add_argument("--ttl", type=duration, metavar="DURATION",
                   help="lifetime, e.g. 90s, 10m, 1h (default: $SWARMBUS_SIGNAL_TTL)")
    p.add_argument("--wait", type=duration, metavar="S",
                   help="wait up to S seconds for every target, print the final status; "
                        "exit 1 if a target failed or expired, or on timeout")

    p = _command(sub, "tail", "Print signals without joining any consumer group.", [
        "swarmbus tail --last 20",
        "swarmbus tail 'WHALE_*' RISK_ALERT -f --since 10m",
        "swarmbus tail -f --target risk-manager --json",
    ], cmd_tail)
    p.add_argument("topics", nargs="*", metavar="TOPIC", help="topics or globs (default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new signals")
    p.add_argument("--since", type=since, metavar="10m|ID|ISO",
                   help="start this long ago, after a stream entry id, or at a UTC time")
    p.add_argument("--last", type=_count(0), metavar="N",
                   help="start with the last N entries (counted before filters)")
    p.add_argument("--source", metavar="S", help="only signals from this agent")
    p.add_argument("--target", metavar="T",
                   help="only signals addressed to this agent (broadcasts name no target)")
    _json_flag(p)

    p = _command(sub, "status", "Show a signal's processing status per target.", [
        "swarmbus status 01HX5T1J5Y8Q3Z6K2M4N7P9R0S",
        "swarmbus status 01HX5T1J5Y8Q3Z6K2M4N7P9R0S --json",
    ], cmd_status)
    p.add_argument("id", metavar="ID", help="signal id (printed by publish)")
    _json_flag(p)

    p = _command(sub, "agents", "List consumers with their last heartbeat, live and dead, "
                 "and the work dead ones still hold.", [
                     "swarmbus agents", "swarmbus agents --json",
                 ], cmd_agents)
    _json_flag(p)

    p = _command(sub, "groups", "Show consumer groups: consumers, pending, lag, idle.", [
        "swarmbus groups", "swarmbus groups WHALE_ACTIVITY --json",
    ], cmd_groups)
    p.add_argument("topic", nargs="?", metavar="TOPIC", help="one topic (default: all)")
    _json_flag(p)

    dlq = _command(sub, "dlq", "Inspect, replay or purge a topic's dead letters.", [
        "swarmbus dlq list WHALE_ACTIVITY",
        "swarmbus dlq replay WHALE_ACTIVITY",
    ])
    actions = dlq.add_subparsers(dest="action", metavar="ACTION")
    p = _command(actions, "list", "List the oldest dead letters of a topic.", [
        "swarmbus dlq list WHALE_ACTIVITY --limit 10",
    ], cmd_dlq_list)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--limit", type=_count(1), default=100, metavar="N",
                   help="at most N (default: 100)")
    _json_flag(p)
    p = _command(actions, "show", "Show one dead letter with its signal.", [
        "swarmbus dlq show WHALE_ACTIVITY 1712345678901-0",
    ], cmd_dlq_show)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("id", metavar="ID", help="dead-letter id (from 'dlq list') or signal id")
    _json_flag(p)
    p = _command(actions, "replay", "Put dead letters back on their topic for their target.", [
        "swarmbus dlq replay WHALE_ACTIVITY",
        "swarmbus dlq replay WHALE_ACTIVITY 1712345678901-0 1712345678950-0",
    ], cmd_dlq_replay)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (default: all)")
    p = _command(actions, "purge", "Delete every dead letter of a topic.", [
        "swarmbus dlq purge WHALE_ACTIVITY",
    ], cmd_dlq_purge)
    p.add_argument("topic", metavar="TOPIC")

    p = _command(sub, "coordinator", "Run the coordinator (consolidation, checkpoints, janitor, "
                 "analytics) until SIGINT/SIGTERM.", [
                     "swarmbus coordinator",
                     "swarmbus coordinator --checkpoint-every 1m --analytics-every 10s",
                 ], cmd_coordinator)
    p.add_argument("--name", metavar="NAME",
                   help="consumer name, stable across restarts (default: coordinator:HOST)")
    p.add_argument("--checkpoint-every", type=period, default=300.0, metavar="DURATION",
                   help="checkpoint every agent's changed state this often (default: 5m)")
    p.add_argument("--janitor-every", type=period, default=60.0, metavar="DURATION",
                   help="trim streams and clean up this often (default: 1m)")
    p.add_argument("--analytics-every", type=period, default=5.0, metavar="DURATION",
                   help="feed the anomaly detectors this often (default: 5s)")

    _memory_parser(sub)

    p = _command(sub, "stats", "Show per-agent decision and handler statistics, and recent "
                 "anomalies.", [
                     "swarmbus stats", "swarmbus stats --agent risk-manager --window 24h --json",
                 ], cmd_stats)
    p.add_argument("--agent", type=agent_name, metavar="A", help="one agent (default: all)")
    p.add_argument("--window", type=period, default=3600.0, metavar="DURATION",
                   help="look back this long, e.g. 10m, 24h (default: 1h)")
    _json_flag(p)

    backup = _command(sub, "backup", "Back up or restore every agent's memory (gzip JSON lines).",
                      [
                          "swarmbus backup export memory.jsonl.gz",
                          "swarmbus --namespace restored backup import memory.jsonl.gz",
                      ])
    actions = backup.add_subparsers(dest="action", metavar="ACTION")
    p = _command(actions, "export", "Write decisions, patterns, states and checkpoints to FILE.", [
        "swarmbus backup export memory.jsonl.gz",
    ], cmd_backup_export)
    p.add_argument("file", metavar="FILE", help="the backup to write (replaced if it exists)")
    p = _command(actions, "import", "Restore a backup into the namespace (empty unless --merge).",
                 [
                     "swarmbus --namespace restored backup import memory.jsonl.gz",
                     "swarmbus backup import memory.jsonl.gz --merge",
                 ], cmd_backup_import)
    p.add_argument("file", metavar="FILE", help="a file written by 'swarmbus backup export'")
    p.add_argument("--merge", action="store_true",
                   help="add to a namespace that is not empty (records present are kept)")

    p = _command(sub, "demo", "Run the reference trading fleet live (in memory unless --redis).", [
        "swarmbus demo", "swarmbus --redis redis://localhost:6379/0 demo --seconds 60",
    ], cmd_demo)
    p.add_argument("--seconds", type=duration, default=15.0, metavar="N",
                   help="how long to run (default: 15)")
    return parser


def _memory_parser(sub: Any) -> None:
    memory = _command(sub, "memory", "Inspect an agent's decisions, patterns, statistics and "
                      "state.", [
                          "swarmbus memory decisions --agent risk-manager --since 1h --failed",
                          "swarmbus memory patterns --agent risk-manager --min-confidence 0.6",
                      ])
    actions = memory.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, summary: str, examples: Sequence[str], func: Any) -> _Parser:
        p = _command(actions, name, summary, examples, func)
        p.add_argument("--agent", type=agent_name, required=True, metavar="A",
                       help="the agent whose memory to read")
        return p

    p = action("decisions", "List an agent's decisions, newest first, or show one or a chain.", [
        "swarmbus memory decisions --agent risk-manager --type RISK_ASSESSMENT --since 1h",
        "swarmbus memory decisions --agent risk-manager --failed --limit 10 --json",
        "swarmbus memory decisions --agent risk-manager --chain 'risk-manager~01HX5T1J5Y8Q'",
    ], cmd_memory_decisions)
    p.add_argument("--type", metavar="T", help="only this decision type")
    p.add_argument("--since", type=moment, metavar="10m|ISO",
                   help="made this long ago or later, or at/after a UTC time")
    p.add_argument("--until", type=moment, metavar="10m|ISO",
                   help="made this long ago or earlier, or at/before a UTC time")
    outcome = p.add_mutually_exclusive_group()
    outcome.add_argument("--success", dest="success", action="store_const", const=True,
                         help="only decisions whose outcome was a success")
    outcome.add_argument("--failed", dest="success", action="store_const", const=False,
                         help="only decisions whose outcome was a failure")
    p.add_argument("--limit", type=_count(1), metavar="N", help="at most N (default: 50)")
    one = p.add_mutually_exclusive_group()
    one.add_argument("--id", metavar="ID", help="show this decision in full")
    one.add_argument("--chain", metavar="ID",
                     help="show this decision with its ancestors and descendants")
    _json_flag(p)

    p = action("patterns", "List an agent's learned patterns by confidence, or show one.", [
        "swarmbus memory patterns --agent risk-manager",
        "swarmbus memory patterns --agent risk-manager --type RISK_ASSESSMENT "
        "--min-confidence 0.6 --shared",
    ], cmd_memory_patterns)
    p.add_argument("--type", metavar="T", help="only this decision type")
    p.add_argument("--min-confidence", type=fraction, default=0.0, metavar="X",
                   help="only patterns with confidence >= X, from 0 to 1 (default: 0)")
    p.add_argument("--shared", action="store_true",
                   help="include patterns other agents shared with this one")
    p.add_argument("--limit", type=_count(1), default=20, metavar="N",
                   help="at most N (default: 20)")
    p.add_argument("--id", metavar="ID", help="show this pattern in full")
    _json_flag(p)

    p = action("stats", "Show an agent's decision statistics over a window, overall and by type.", [
        "swarmbus memory stats --agent risk-manager",
        "swarmbus memory stats --agent risk-manager --window 1h --type RISK_ASSESSMENT",
    ], cmd_memory_stats)
    p.add_argument("--window", type=period, default=86_400.0, metavar="DURATION",
                   help="look back this long, in whole minutes (default: 24h)")
    p.add_argument("--type", metavar="T", help="only this decision type")
    _json_flag(p)

    p = action("state", "Show an agent's state: version, last update and data.", [
        "swarmbus memory state --agent risk-manager",
        "swarmbus memory state --agent risk-manager --json",
    ], cmd_memory_state)
    _json_flag(p)

    p = action("checkpoints", "List an agent's state checkpoints, newest first.", [
        "swarmbus memory checkpoints --agent risk-manager",
    ], cmd_memory_checkpoints)
    _json_flag(p)

    p = action("rollback", "Restore a state checkpoint (the latest by default) as a new version.", [
        "swarmbus memory rollback --agent risk-manager",
        "swarmbus memory rollback --agent risk-manager --checkpoint 01HX5T1J5Y8Q3Z6K2M4N7P9R0S",
    ], cmd_memory_rollback)
    p.add_argument("--checkpoint", metavar="ID",
                   help="the checkpoint to restore (default: the latest)")
    _json_flag(p)


# -- entry point ---------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    given = {"redis_url": args.redis, "namespace": args.namespace, "log_level": args.log_level}
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise UsageError("invalid settings: " + "; ".join(problems)) from None


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"swarmbus: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), 2, False)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    debug: bool = args.debug
    if getattr(args, "func", None) is None:  # checked here so unknown flags are named first
        nested = args.command in ("dlq", "memory", "backup")
        where = f"swarmbus {args.command}" if nested else "swarmbus"
        return _fail(f"missing command: see '{where} --help'", 2, False)
    try:
        settings = _settings(args)
        try:
            configure_logging(settings.log_format, settings.log_level)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return int(args.func(args, settings))
    except (UsageError, ConfigurationError) as exc:
        return _fail(str(exc), 2, debug)
    except (SwarmbusError, CommandFailed) as exc:
        return _fail(str(exc), 1, debug)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `swarmbus tail | head`: quiet, exit 1 as rich and Python do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        hint = "" if debug else " (run with --debug for the traceback)"
        return _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", 1, debug)


def run() -> None:
    """``python -m swarmbus`` and wrappers that need the process to exit."""
    sys.exit(main())
