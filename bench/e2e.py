"""End-to-end workloads: separate producer and worker processes, on the same Redis.

- throughput: COUNT signals published as fast as the producer can; signals/s from the
  first publish to the moment every target's group has read and acked every entry
  (for swarmbus an ack is written together with the terminal status);
- latency: single publishes at a fixed rate; publish-to-handler p50/p95/p99;
- footprint: worker RSS after the throughput run; Redis bytes per retained signal.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from .common import Figure
from .e2e_proc import groups, stream_key

ROOT = Path(__file__).resolve().parents[1]
HAVE_FASTSTREAM = importlib.util.find_spec("faststream") is not None
# FastStream is a bench-only extra: pip install -e '.[bench]'
SYSTEMS = ["swarmbus", "faststream", "raw"] if HAVE_FASTSTREAM else ["swarmbus", "raw"]
LABEL = {"swarmbus": "swarmbus", "faststream": "FastStream", "raw": "raw redis-py floor"}


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.e2e_proc", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def _drained(client: redis.Redis, key: str, names: list[str], count: int) -> bool:
    try:
        info = {g["name"].decode(): g for g in client.xinfo_groups(key)}
    except redis.ResponseError:
        return False
    for name in names:
        g = info.get(name)
        if g is None or (g.get("entries-read") or 0) < count or g["pending"]:
            return False
    return True


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(system: str, url: str, targets: int, count: int, rate: float,
             timeout: float = 300) -> tuple[float, list[float], int, float]:
    """(signals/s, latencies ms, worker RSS KiB, worker CPU µs per delivery) for one
    producer/worker pair."""
    namespace = "e" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "lat.json")
        worker = _spawn("worker", system, url, namespace, str(targets), out)
        assert worker.stdout is not None
        assert worker.stdout.readline().startswith("ready"), f"{system} worker did not start"
        cpu_before = _cpu_seconds(worker.pid)
        producer = _spawn("producer", system, url, namespace, str(targets), str(count),
                          str(rate))
        client = redis.Redis.from_url(url)
        key, names = stream_key(system, namespace), groups(system, targets)
        deadline = time.monotonic() + timeout
        try:
            while not _drained(client, key, names, count):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{system}: not drained in {timeout} s")
                time.sleep(0.002)
            done = time.time()
            assert producer.stdout is not None
            first = float(producer.stdout.readline())
            producer.wait(60)
            rss = _rss_kb(worker.pid)
            cpu_us = (_cpu_seconds(worker.pid) - cpu_before) * 1e6 / (count * targets)
        finally:
            worker.terminate()
            worker.wait(60)
            if producer.poll() is None:
                producer.kill()
            for p in (worker, producer):
                if p.stdout is not None:
                    p.stdout.close()
            for k in client.scan_iter(match=f"{namespace}:*"):
                client.delete(k)
            client.close()
        latencies = json.loads(Path(out).read_text())
    return count / (done - first), latencies, rss, cpu_us


def bytes_per_signal(url: str, n: int = 10_000) -> dict[str, float]:
    """Redis memory per retained signal: swarmbus (entry + status) and a raw XADD."""
    import anyio

    import swarmbus
    from swarmbus import Signal

    client = redis.Redis.from_url(url)
    out = {}
    namespace = "m" + uuid.uuid4().hex[:8]

    async def fill() -> None:
        async with swarmbus.connect(url, namespace=namespace) as bus:
            for i in range(0, n, 1000):
                await bus.publish_many([Signal(type="FOOT", source="producer",
                                               targets=["worker"], data={"n": j, "x": "y"})
                                        for j in range(i, i + 1000)])

    before = client.info("memory")["used_memory"]
    anyio.run(fill)
    out["swarmbus"] = (client.info("memory")["used_memory"] - before) / n
    key = f"{namespace}:raw-foot"
    before = client.info("memory")["used_memory"]
    pipe = client.pipeline(transaction=False)
    for j in range(n):
        pipe.xadd(key, {"d": json.dumps({"n": j, "x": "y"})})
    pipe.execute()
    out["raw redis-py floor"] = (client.info("memory")["used_memory"] - before) / n
    for k in client.scan_iter(match=f"{namespace}:*"):
        client.delete(k)
    client.close()
    return out


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else float("nan")


def run(url: str, quick: bool, repeats: int) -> list[Figure]:
    count = 10_000 if quick else 50_000
    latency_seconds = 3 if quick else 10
    figures: list[Figure] = []
    for targets in (1, 2):
        for system in SYSTEMS:
            fig = Figure(f"end-to-end {count:,} signals, {targets} target(s)", LABEL[system],
                         "signals/s")
            rss = Figure("worker RSS after the run", LABEL[system], "MiB",
                         higher_is_better=False)
            cpu = Figure(f"worker CPU per delivery, {targets} target(s)", LABEL[system], "µs",
                         higher_is_better=False)
            for _ in range(repeats):
                rate, _, kib, cpu_us = run_once(system, url, targets, count, 0)
                fig.values.append(rate)
                rss.values.append(kib / 1024)
                cpu.values.append(cpu_us)
            figures += [fig, cpu]
            if targets == 1:
                figures.append(rss)
    for system in SYSTEMS:
        lat = {q: Figure(f"latency p{q} at 1,000/s", LABEL[system], "ms", higher_is_better=False)
               for q in (50, 95, 99)}
        for _ in range(repeats):
            _, latencies, _, _ = run_once(system, url, 1, 1000 * latency_seconds, 1000)
            for q, fig in lat.items():
                fig.values.append(_pct(latencies, q))
        figures += lat.values()
    for system, value in bytes_per_signal(url).items():
        figures.append(Figure("Redis bytes per retained signal", system, "bytes", [value],
                              higher_is_better=False))
    return figures
