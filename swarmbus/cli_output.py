"""Human and JSON renderings for the ``swarmbus`` command (stdout only carries data).

Human output is plain aligned columns styled with rich ``Text``: colour on a terminal,
plain text in a pipe, and never wrapped or truncated by the terminal width (ids and
consumer names must stay copyable). ``--json`` output is one JSON object per line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from .agents import Heartbeat
from .agents.decisions import Decision, DecisionStats
from .agents.patterns import Pattern
from .agents.state import Checkpoint, State
from .bus import DeadLetter, GroupInfo, Signal, SignalStatus
from .coordinator import AgentStats, Anomaly, HeldWork

__all__ = [
    "agent_stats_table",
    "anomalies_table",
    "chain_table",
    "checkpoints_table",
    "dead_letter_lines",
    "dead_letters_table",
    "decision_lines",
    "decision_stats_table",
    "decisions_table",
    "groups_table",
    "heartbeats_table",
    "held_work_table",
    "json_line",
    "make_console",
    "pattern_lines",
    "patterns_table",
    "short_json",
    "shorten",
    "signal_line",
    "state_lines",
    "status_lines",
    "table",
]

SEVERITY_STYLE = {"low": "dim", "medium": "cyan", "high": "yellow", "critical": "bold red"}
STATE_STYLE = {
    "pending": "blue",
    "delivered": "yellow",
    "processed": "green",
    "failed": "bold red",
    "expired": "magenta",
}
DATA_WIDTH = 80

Cell = str | Text


def make_console(*, stderr: bool = False) -> Console:
    """A console that styles only on a terminal and never wraps or interprets markup."""
    return Console(
        file=sys.stderr if stderr else sys.stdout,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=True,
    )


def json_line(value: BaseModel | dict[str, Any]) -> str:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def short_json(data: dict[str, Any], width: int = DATA_WIDTH) -> str:
    return shorten(json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str),
                   width)


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _ago(moment: datetime) -> str:
    seconds = max(time.time() - moment.timestamp(), 0.0)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _route(signal: Signal) -> str:
    return f"{signal.source} -> {','.join(signal.targets) or '*'}"


def signal_line(signal: Signal) -> Text:
    """``12:00:01.234Z  PING            cli -> risk        medium    {"n":1}``"""
    severity = signal.severity.value
    style = SEVERITY_STYLE.get(severity, "")
    return Text.assemble(
        (_clock(signal.created_at), "dim"),
        "  ",
        (signal.type.ljust(16), style or "bold"),
        "  ",
        _route(signal).ljust(20),
        "  ",
        (severity.ljust(8), style),
        "  ",
        short_json(signal.data),
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> list[Text]:
    """Left-aligned columns two spaces apart; the header line is bold."""
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, c.cell_len) for w, c in zip(widths, row, strict=True)]
    lines = [Text("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
                  style="bold")]
    for row in cells:
        line = Text()
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            if i:
                line.append("  ")
            line.append_text(cell)
            if i < len(row) - 1:
                line.append(" " * (width - cell.cell_len))
        line.rstrip()
        lines.append(line)
    return lines


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def status_lines(status: SignalStatus) -> list[Text]:
    """A header line naming the signal, then one row per target."""
    head = Text.assemble(("signal ", "dim"), (status.signal_id, "bold"), ("  type ", "dim"),
                         status.type)
    if status.entry_id:
        head.append_text(Text.assemble(("  entry ", "dim"), status.entry_id))
    if not status.targets:
        return [head, Text("(no targets: nobody subscribed to this type when it was published)",
                           style="dim")]
    targets = status.targets.items()
    headers = ["TARGET", "STATE", "ATTEMPTS", "UPDATED", "CONSUMER"]
    optional = [("DECISION", "decision_id"), ("ERROR", "error")]
    shown = [(h, f) for h, f in optional if any(getattr(t, f) for _, t in targets)]
    rows = []
    for name, t in targets:
        row: list[Cell] = [name, _state(t.state.value), str(t.attempts), _when(t.updated_at),
                           t.consumer or "-"]
        row += [getattr(t, f) or "-" for _, f in shown]
        rows.append(row)
    return [head, *table(headers + [h for h, _ in shown], rows)]


def heartbeats_table(beats: Sequence[Heartbeat]) -> list[Text]:
    rows: list[list[Cell]] = [
        [
            h.agent, h.consumer,
            Text("alive", style="green") if h.alive else Text("dead", style="bold red"),
            h.version, str(h.in_flight), str(h.processed), str(h.failed), _ago(h.last_beat),
            ",".join(h.topics),
        ]
        for h in beats
    ]
    return table(["AGENT", "CONSUMER", "STATE", "VERSION", "IN-FLIGHT", "PROCESSED",
                  "FAILED", "LAST BEAT", "TOPICS"], rows)


def groups_table(groups: Sequence[GroupInfo]) -> list[Text]:
    rows: list[list[Cell]] = []
    for g in groups:
        lag = "?" if g.lag is None else str(g.lag)
        idle = "-" if g.idle is None else f"{g.idle:.1f}s"
        behind = Text(lag, style="yellow" if g.lag else "")
        rows.append([g.topic, g.agent, str(g.consumers), str(g.pending), behind, idle,
                     g.last_delivered_id])
    return table(["TOPIC", "AGENT", "CONSUMERS", "PENDING", "LAG", "IDLE", "LAST DELIVERED"],
                 rows)


def _dl_signal(dl: DeadLetter) -> str:
    return dl.signal.id if dl.signal is not None else "(undecodable entry)"


def dead_letters_table(letters: Sequence[DeadLetter]) -> list[Text]:
    rows: list[list[Cell]] = [
        [dl.id, _dl_signal(dl), dl.target or "-", Text(dl.error_type, style="red"),
         str(dl.attempts), _when(dl.failed_at), shorten(dl.error, 60)]
        for dl in letters
    ]
    return table(["ID", "SIGNAL", "TARGET", "ERROR TYPE", "ATTEMPTS", "FAILED AT", "ERROR"],
                 rows)


def dead_letter_lines(dl: DeadLetter) -> list[Text]:
    """Every field of one dead letter, then the signal (or the raw entry) as JSON."""
    pairs = [
        ("id", dl.id), ("topic", dl.topic), ("target", dl.target or "-"),
        ("error type", dl.error_type), ("error", dl.error), ("attempts", str(dl.attempts)),
        ("failed at", _when(dl.failed_at)), ("entry", dl.entry_id or "-"),
    ]
    lines = [Text.assemble((f"{k + ':':<12}", "dim"), v) for k, v in pairs]
    if dl.signal is not None:
        lines.append(Text.assemble(("signal:", "dim")))
        body = json.dumps(dl.signal.model_dump(mode="json"), indent=2, ensure_ascii=False)
    else:
        lines.append(Text.assemble(("raw entry:", "dim")))
        body = json.dumps(dl.raw or {}, indent=2, ensure_ascii=False)
    lines.extend(Text(line) for line in body.splitlines())
    return lines


# -- memory --------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _pairs(pairs: Sequence[tuple[str, Cell]], width: int = 12) -> list[Text]:
    return [Text.assemble((f"{k + ':':<{width}}", "dim"), v) for k, v in pairs]


def _json_block(title: str, data: Any) -> list[Text]:
    body = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return [Text(title + ":", style="dim"), *(Text(line) for line in body.splitlines())]


def _outcome(decision: Decision) -> Text:
    if decision.outcome is None:
        return Text("-", style="dim")
    if decision.outcome.success:
        return Text("success", style="green")
    return Text("failed", style="bold red")


def _decision_row(d: Decision) -> list[Cell]:
    o = d.outcome
    return [
        d.id, d.decision_type, _when(d.created_at), ",".join(d.reasoning.selected) or "-",
        _num(d.reasoning.confidence, ".2f"), _outcome(d),
        _num(o.quality_score if o else None, ".2f"),
        "-" if o is None or o.latency_ms is None else f"{o.latency_ms:.1f}ms",
        short_json(d.context, 40),
    ]


_DECISION_HEADERS = ["ID", "TYPE", "CREATED", "SELECTED", "CONF", "OUTCOME", "QUALITY",
                     "LATENCY", "CONTEXT"]


def decisions_table(decisions: Sequence[Decision]) -> list[Text]:
    """Newest first, as the library returns them."""
    return table(_DECISION_HEADERS, [_decision_row(d) for d in decisions])


def chain_table(chain: Sequence[Decision], focus: str) -> list[Text]:
    """Ancestors, the decision (``>``), descendants; with each one's parent."""
    rows: list[list[Cell]] = []
    seen_focus = False
    for d in chain:
        if d.id == focus:
            seen_focus = True
            role = Text("> this", style="bold")
        else:
            role = Text("descendant" if seen_focus else "ancestor", style="dim")
        rows.append([role, *_decision_row(d)[:6], d.parent_decision_id or "-"])
    return table(["ROLE", *_DECISION_HEADERS[:6], "PARENT"], rows)


def decision_lines(d: Decision) -> list[Text]:
    """Every field of one decision; context, reasoning and outcome as JSON."""
    o = d.outcome
    pairs: list[tuple[str, Cell]] = [
        ("id", d.id), ("agent", d.agent + (f" {d.agent_version}" if d.agent_version else "")),
        ("type", d.decision_type), ("created", _when(d.created_at)),
        ("signal", d.signal_id or "-"), ("parent", d.parent_decision_id or "-"),
        ("selected", ", ".join(d.reasoning.selected) or "-"),
        ("confidence", _num(d.reasoning.confidence, ".2f")),
        ("conditions", " ".join(f"{k}={v}" for k, v in d.conditions.items()) or "-"),
        ("outcome", _outcome(d)),
    ]
    if o is not None:
        pairs += [("quality", _num(o.quality_score, ".2f")),
                  ("latency", "-" if o.latency_ms is None else f"{o.latency_ms:.1f}ms"),
                  ("recorded", _when(o.recorded_at)),
                  ("errors", "; ".join(o.errors) or "-")]
    lines = _pairs(pairs)
    lines += _json_block("context", d.context)
    lines += _json_block("reasoning", d.reasoning.model_dump(mode="json"))
    if o is not None and (o.data or o.signals_generated):
        lines += _json_block("outcome data", {"data": o.data,
                                              "signals_generated": o.signals_generated})
    return lines


def decision_stats_table(stats: Sequence[DecisionStats]) -> list[Text]:
    rows: list[list[Cell]] = [
        [s.decision_type or "*", _when(s.window_start), str(s.count), str(s.outcomes),
         _percent(s.success_rate), _num(s.mean_confidence), _num(s.mean_quality),
         _num(s.latency_p50_ms, ".1f"), _num(s.latency_p95_ms, ".1f")]
        for s in stats
    ]
    return table(["TYPE", "SINCE", "DECISIONS", "OUTCOMES", "SUCCESS", "CONFIDENCE", "QUALITY",
                  "P50 MS", "P95 MS"], rows)


def _status(pattern: Pattern) -> Text:
    return Text(pattern.status, style="green" if pattern.status == "active" else "yellow")


def patterns_table(patterns: Sequence[Pattern], agent: str) -> list[Text]:
    """By confidence; an OWNER column only when shared patterns of other agents show."""
    foreign = any(p.agent != agent for p in patterns)
    rows: list[list[Cell]] = []
    for p in patterns:
        row: list[Cell] = [p.id, p.decision_type, f"{p.confidence:.3f}", _status(p),
                           str(p.sample_size), _percent(p.success_rate), _num(p.mean_quality)]
        rows.append([*row, p.agent, p.description] if foreign else [*row, p.description])
    headers = ["ID", "TYPE", "CONFIDENCE", "STATUS", "SAMPLES", "SUCCESS", "QUALITY"]
    return table([*headers, *(["OWNER"] if foreign else []), "DESCRIPTION"], rows)


def pattern_lines(p: Pattern) -> list[Text]:
    pairs: list[tuple[str, Cell]] = [
        ("id", p.id), ("agent", p.agent), ("type", p.decision_type),
        ("conditions", " ".join(f"{k}={v}" for k, v in p.conditions.items()) or "-"),
        ("choice", ", ".join(p.choice) or "-"), ("status", _status(p)),
        ("confidence", f"{p.confidence:.3f}"), ("samples", str(p.sample_size)),
        ("successes", str(p.successes)), ("success", _percent(p.success_rate)),
        ("quality", _num(p.mean_quality)), ("variance", _num(p.quality_variance)),
        ("version", str(p.version)), ("learned", _when(p.learned_at)),
        ("updated", _when(p.last_updated)), ("shared with", ", ".join(p.shared_with) or "-"),
        ("description", p.description),
    ]
    lines = _pairs(pairs, 13)
    if p.user_metadata:
        lines += _json_block("user metadata", p.user_metadata)
    return lines


def state_lines(agent: str, state: State) -> list[Text]:
    lines = _pairs([("agent", agent), ("version", str(state.version)),
                    ("updated at", _when(state.updated_at))])
    return lines + _json_block("data", state.data)


def checkpoints_table(checkpoints: Sequence[Checkpoint]) -> list[Text]:
    rows: list[list[Cell]] = [
        [c.id, c.label or "-", str(c.version), _when(c.created_at), short_json(c.data, 60)]
        for c in checkpoints
    ]
    return table(["ID", "LABEL", "VERSION", "CREATED", "DATA"], rows)


# -- coordinator ---------------------------------------------------------------------------


def agent_stats_table(rows: Sequence[AgentStats]) -> list[Text]:
    cells: list[list[Cell]] = [
        [r.agent, r.decision_type or "*", str(r.decisions), _percent(r.success_rate),
         _num(r.mean_quality), _num(r.handler_p50_ms, ".1f"), _num(r.handler_p95_ms, ".1f"),
         f"{r.throughput_per_s:.{1 if r.throughput_per_s >= 10 else 3}f}"]
        for r in rows
    ]
    return table(["AGENT", "TYPE", "DECISIONS", "SUCCESS", "QUALITY", "P50 MS", "P95 MS",
                  "THROUGHPUT/S"], cells)


def anomalies_table(found: Sequence[Anomaly]) -> list[Text]:
    rows: list[list[Cell]] = [
        [_when(a.at), a.agent, Text(a.metric, style="yellow"), f"{a.value:.3f}",
         f"{a.mean:.3f}", f"{a.std:.3f}", f"{a.z:+.1f}"]
        for a in found
    ]
    return table(["ANOMALY AT", "AGENT", "METRIC", "VALUE", "MEAN", "STD", "Z"], rows)


def held_work_table(held: Sequence[HeldWork]) -> list[Text]:
    rows: list[list[Cell]] = [
        [h.topic, h.agent, h.consumer, Text(str(h.pending), style="yellow"),
         _when(h.oldest_since)]
        for h in held
    ]
    return table(["HELD ON TOPIC", "AGENT", "DEAD CONSUMER", "PENDING", "OLDEST SINCE"], rows)
