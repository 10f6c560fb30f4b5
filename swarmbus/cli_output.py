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
from .bus import DeadLetter, GroupInfo, Signal, SignalStatus

__all__ = [
    "dead_letter_lines",
    "dead_letters_table",
    "groups_table",
    "heartbeats_table",
    "json_line",
    "make_console",
    "short_json",
    "shorten",
    "signal_line",
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
