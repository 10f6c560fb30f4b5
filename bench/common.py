"""Shared bench plumbing: the Redis to run on, repeats, and the results table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from swarmbus.testing import RedisProcess


@dataclass
class Figure:
    workload: str
    system: str
    unit: str
    values: list[float] = field(default_factory=list)
    higher_is_better: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out.update(min=min(self.values), median=self.median, max=max(self.values))
        return out


@contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    """The given URL, or a private redis-server started for the run (no persistence)."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="swarmbus-bench-") as tmp:
        server = RedisProcess(Path(tmp), aof=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def environment(url: str) -> dict[str, object]:
    client = redis.Redis.from_url(url)
    try:
        version = client.info("server")["redis_version"]
    finally:
        client.close()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip() or None
    except OSError:
        sha = None
    return {
        "git_sha": sha,
        "redis_version": version,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }


def table(figures: list[Figure], baseline: str = "swarmbus") -> str:
    """A plain-text table: each figure with min/median/max and its ratio to the others."""
    by_workload: dict[str, list[Figure]] = {}
    for f in figures:
        by_workload.setdefault(f.workload, []).append(f)
    rows = [("workload", "system", "median", "min", "max", "unit", "vs swarmbus")]
    for workload, figs in by_workload.items():
        base = next((f for f in figs if f.system == baseline), None)
        for f in figs:
            ratio = ""
            if base is not None and f is not base and f.median:
                r = base.median / f.median if f.higher_is_better else f.median / base.median
                ratio = f"swarmbus x{r:.2f}"
            rows.append((workload, f.system, _num(f.median), _num(min(f.values)),
                         _num(max(f.values)), f.unit, ratio))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"


def write_json(path: Path, env: dict[str, object], figures: list[Figure]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": env,
                                "figures": [f.summary() for f in figures]}, indent=2))
