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
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import anyio
from pydantic import ValidationError
from rich.text import Text

from . import __version__
from .agents import Agent, Worker, heartbeats
from .bus import Bus, Severity, Signal, SignalStatus, StatusState, connect
from .cli_output import (
    dead_letter_lines,
    dead_letters_table,
    groups_table,
    heartbeats_table,
    json_line,
    make_console,
    signal_line,
    status_lines,
)
from .errors import ConfigurationError, NotFound, SwarmbusError, WaitTimeout
from .logging import configure_logging
from .settings import Settings

__all__ = ["main"]

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
        if args.json:
            for beat in beats:
                _out(json_line(beat))
        else:
            _print_rows(heartbeats_table(beats),
                        f"no consumers seen in namespace {settings.namespace!r}")
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
        # The library has no lookup by id yet: scan the dead letters of the topic.
        letters = await bus.dead_letters(args.topic, limit=1_000_000)
        found = [dl for dl in letters
                 if args.id in (dl.id, dl.entry_id, dl.signal.id if dl.signal else None)]
        if not found:
            raise NotFound(f"no dead letter {args.id!r} on {args.topic} "
                           f"(see: swarmbus dlq list {args.topic})")
        if args.json:
            _out(json_line(found[0]))
        else:
            _print(dead_letter_lines(found[0]))
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

    p = _command(sub, "agents", "List consumers with their last heartbeat, live and dead.", [
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

    p = _command(sub, "demo", "Run the reference trading fleet live (in memory unless --redis).", [
        "swarmbus demo", "swarmbus --redis redis://localhost:6379/0 demo --seconds 60",
    ], cmd_demo)
    p.add_argument("--seconds", type=duration, default=15.0, metavar="N",
                   help="how long to run (default: 15)")
    return parser


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
        where = "swarmbus dlq" if args.command == "dlq" else "swarmbus"
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
