"""Analytics: per-agent figures and rolling z-score anomaly detection.

Two metrics per agent are watched: ``handler_latency`` (the median handler time of each
heartbeat interval, from the workers' metrics streams: a few stalled handlers do not move
it) and ``decision_quality`` (the mean
quality of the outcomes of each completed minute, from the memory rollups). For each, the
last ``window`` normal samples form the baseline; a sample further than ``threshold``
standard deviations from its mean in the bad direction (slower, lower quality; the
deviation floored at 25 % of the mean, so a very steady baseline does not flag jitter:
with the default threshold a latency must rise to 1.75x its baseline to count)
starts an *episode*: one anomaly is recorded and
one ``ANOMALY_DETECTED`` signal published. The episode ends after ``end_after`` normal
samples in a row (so the mixed samples at the edges of a change do not raise a second
alarm); if it lasts ``adapt_after`` anomalous samples, the new level becomes the baseline
without a second alarm. Detector state lives in Redis, so a restarted coordinator carries on.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..agents.registry import IntervalMetrics
from ..bus.signal import Severity, Signal

if TYPE_CHECKING:
    from ..bus.connection import Bus

__all__ = ["AgentStats", "Anomaly", "Detector", "anomalies", "report", "tick"]

#: The deviation used for z is at least this fraction of the baseline mean.
RELATIVE_FLOOR = 0.25
#: Metric -> the direction that is bad: a faster handler or better decisions are no alarm.
METRICS = {"handler_latency": 1, "decision_quality": -1}


class Detector(BaseModel):
    history: list[float] = Field(default_factory=list)
    recent: list[float] = Field(default_factory=list)
    episode: bool = False
    calm: int = 0
    cursor: str = "0-0"


class Anomaly(BaseModel):
    model_config = ConfigDict(frozen=True)

    agent: str
    metric: str
    value: float
    mean: float
    std: float
    z: float
    at: datetime


def observe(
    detector: Detector,
    samples: list[float],
    *,
    agent: str,
    metric: str,
    threshold: float,
    min_history: int,
    window: int = 30,
    adapt_after: int = 20,
    end_after: int = 3,
    direction: int = 0,
) -> list[Anomaly]:
    """Feed samples in order; returns the anomalies that started an episode.

    :param direction: 1 flags only rises, -1 only drops, 0 both.
    """
    found: list[Anomaly] = []
    for x in samples:
        if len(detector.history) >= min_history:
            mean = statistics.fmean(detector.history)
            std = statistics.pstdev(detector.history)
            scale = max(std, RELATIVE_FLOOR * abs(mean), 1e-9)
            z = (x - mean) / scale
            if (z if direction > 0 else -z if direction < 0 else abs(z)) > threshold:
                detector.recent.append(x)
                detector.calm = 0
                if not detector.episode:
                    detector.episode = True
                    found.append(Anomaly(agent=agent, metric=metric, value=x, mean=mean,
                                         std=std, z=z, at=datetime.now(UTC)))
                if len(detector.recent) >= adapt_after:  # the new normal
                    detector.history = detector.recent[-window:]
                    detector.recent, detector.episode = [], False
                continue
            if detector.episode:  # hysteresis: a lone normal sample does not end it
                detector.calm += 1
                if detector.calm >= end_after:
                    detector.episode, detector.recent, detector.calm = False, [], 0
        detector.history = [*detector.history, x][-window:]
    return found


async def _latency_samples(bus: Bus, agent: str, detector: Detector) -> list[float]:
    key = bus.keys.memory(agent).metrics
    start = "(" + detector.cursor if detector.cursor != "0-0" else "-"
    entries = await bus.redis.xrange(key, min=start, count=10_000)
    if entries:
        detector.cursor = entries[-1][0].decode()
    out = []
    for _, fields in entries:
        m = IntervalMetrics.model_validate_json(fields[b"m"])
        if m.p50_ms is not None:
            out.append(m.p50_ms)
    return out


async def _quality_samples(bus: Bus, agent: str, detector: Detector) -> list[float]:
    """One sample per completed minute with outcomes, since the last one seen."""
    now_min = int(time.time()) // 60
    last = int(detector.cursor) if detector.cursor.isdigit() else now_min - 1
    minutes = list(range(max(last + 1, now_min - 60), now_min))
    if not minutes:
        return []
    k = bus.keys.memory(agent)
    async with bus.redis.pipeline(transaction=False) as pipe:
        for m in minutes:
            pipe.hmget(k.minute(m), ["*|qn", "*|qs"])
        rows = await pipe.execute()
    detector.cursor = str(minutes[-1])
    return [float(qs) / int(qn) for qn, qs in rows if qn and int(qn)]


async def tick(
    bus: Bus, agents: list[str], *, threshold: float = 3.0, min_history: int = 10
) -> list[Anomaly]:
    """Feed new samples of every agent to its detectors; record and publish anomalies."""
    key = bus.keys.anomaly_state
    raw = await bus.redis.hgetall(key)
    states = {k.decode(): Detector.model_validate_json(v) for k, v in raw.items()}
    found: list[Anomaly] = []
    for agent in agents:
        for metric, direction in METRICS.items():
            detector = states.setdefault(f"{agent}|{metric}", Detector())
            sampler = _latency_samples if metric == "handler_latency" else _quality_samples
            samples = await sampler(bus, agent, detector)
            found += observe(detector, samples, agent=agent, metric=metric,
                             threshold=threshold, min_history=min_history, direction=direction)
    if states:
        await bus.redis.hset(key, mapping={k: v.model_dump_json() for k, v in states.items()})
    if found:
        async with bus.redis.pipeline(transaction=False) as pipe:
            for a in found:
                pipe.xadd(bus.keys.anomalies, {"a": a.model_dump_json()}, maxlen=10_000,
                          approximate=True)
            await pipe.execute()
        await bus.publish_many([
            Signal(type="ANOMALY_DETECTED", source="coordinator", severity=Severity.high,
                   data=a.model_dump(mode="json"), context={"agent": a.agent,
                                                            "metric": a.metric})
            for a in found
        ])
    return found


async def anomalies(bus: Bus, *, limit: int = 100) -> list[Anomaly]:
    """The most recent anomalies, newest first."""
    with bus.errors():
        entries = await bus.redis.xrevrange(bus.keys.anomalies, count=limit)
    return [Anomaly.model_validate_json(f[b"a"]) for _, f in entries]


class AgentStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    agent: str
    decision_type: str | None
    decisions: int
    success_rate: float | None
    mean_quality: float | None
    #: Handler figures are per agent (all decision types), from the workers' metrics:
    #: interval percentiles weighted by how many signals each interval handled.
    handler_p50_ms: float | None
    handler_p95_ms: float | None
    handled: int
    throughput_per_s: float
    window_s: float


def _weighted(points: list[tuple[float, int]], q: float) -> float | None:
    total = sum(w for _, w in points)
    if not total:
        return None
    seen = 0
    for value, weight in sorted(points):
        seen += weight
        if seen >= q * total:
            return value
    return sorted(points)[-1][0]


async def report(bus: Bus, agents: list[str], *, window: float = 3600.0) -> list[AgentStats]:
    """Per agent and decision type: decisions, success, quality; per agent: handler
    latency and throughput, all over the last ``window`` seconds."""
    out: list[AgentStats] = []
    since = f"{int((time.time() - window) * 1000)}-0"
    for agent in agents:
        with bus.errors():
            entries = await bus.redis.xrange(bus.keys.memory(agent).metrics, min=since)
        metrics = [IntervalMetrics.model_validate_json(f[b"m"]) for _, f in entries]
        p50 = _weighted([(m.p50_ms, m.handled) for m in metrics if m.p50_ms is not None], 0.5)
        p95 = _weighted([(m.p95_ms, m.handled) for m in metrics if m.p95_ms is not None], 0.5)
        handled = sum(m.handled for m in metrics)
        memory = bus.memory(agent)
        rows: list[Any] = [None, *await memory.decision_types()]
        for dtype in rows:
            stats = await memory.stats(window=window, decision_type=dtype)
            if dtype is not None and not stats.count:
                continue
            out.append(AgentStats(
                agent=agent, decision_type=dtype, decisions=stats.count,
                success_rate=stats.success_rate, mean_quality=stats.mean_quality,
                handler_p50_ms=p50, handler_p95_ms=p95, handled=handled,
                throughput_per_s=handled / window, window_s=window,
            ))
    return out

