"""The ``swarmbus`` command: parse, build ``Settings``, configure logging, call the library.

Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted. Errors are one
line on stderr (``swarmbus: error: ...``), with a traceback only under ``--debug``.
Data goes to stdout, logs and progress to stderr. Commands over agent memory and the
coordinator live in ``cli_memory``; shared helpers in ``cli_support``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from . import __version__
from .agents import Worker, heartbeats
from .bus import Bus, Severity, Signal, StatusState
from .cli_memory import (
    cmd_backup_export,
    cmd_backup_import,
    cmd_coordinator,
    cmd_memory_checkpoints,
    cmd_memory_decisions,
    cmd_memory_patterns,
    cmd_memory_rollback,
    cmd_memory_state,
    cmd_memory_stats,
    cmd_stats,
)
from .cli_output import (
    dead_letter_lines,
    dead_letters_table,
    groups_table,
    heartbeats_table,
    held_work_table,
    json_line,
    make_console,
    signal_line,
)
from .cli_support import (
    _ENTRY_ID,
    LOG_LEVELS,
    CommandFailed,
    UsageError,
    _count,
    _out,
    _print,
    _print_rows,
    _show_status,
    agent_name,
    duration,
    emit,
    fraction,
    load_app,
    load_data,
    moment,
    period,
    show,
    since,
    with_bus,
)
from .coordinator.registry import held_work
from .errors import ConfigurationError, NotFound, SwarmbusError, WaitTimeout
from .logging import configure_logging
from .settings import Settings

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    agents = [agent for spec in args.apps for agent in load_app(spec)]

    async def go(bus: Bus) -> int:
        worker = Worker(bus, agents, concurrency=args.concurrency)
        await worker.run(handle_signals=True)
        return 0

    return with_bus(settings, go, patient=True)


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

    return with_bus(settings, go, patient=args.follow)


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
        emit(groups, groups_table, args.json, "no consumer groups")
        return 0

    return with_bus(settings, go)


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    async def go(bus: Bus) -> int:
        letters = await bus.dead_letters(args.topic, limit=args.limit)
        emit(letters, dead_letters_table, args.json, f"no dead letters on {args.topic}")
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
        show(letter, dead_letter_lines, args.json)
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
