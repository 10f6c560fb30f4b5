"""``swarmbus memory``, ``coordinator``, ``stats`` and ``backup``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import anyio

from .agents.decisions import decision_agent
from .bus import Bus
from .cli_output import (
    agent_stats_table,
    anomalies_table,
    chain_table,
    checkpoints_table,
    decision_lines,
    decision_stats_table,
    decisions_table,
    json_line,
    pattern_lines,
    patterns_table,
    state_lines,
)
from .cli_support import (
    CommandFailed,
    UsageError,
    _counting,
    _out,
    _print,
    _print_rows,
    _stop_on_signals,
    emit,
    show,
    with_bus,
)
from .coordinator import Coordinator, analytics
from .coordinator.backup import export_backup, import_backup
from .coordinator.registry import discover_agents
from .settings import Settings


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
            show(decision, decision_lines, args.json)
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
            show(pattern, pattern_lines, args.json)
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
        emit(found, checkpoints_table, args.json, f"agent {args.agent!r} has no checkpoints")
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

    return with_bus(settings, go, patient=True)


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
