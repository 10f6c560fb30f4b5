"""The reference trading fleet: three agents cooperating over swarmbus.

- ``market-hunter`` watches a seeded synthetic market (``MARKET_TICK`` signals from
  ``feed()``) and reports whale activity and trend breaks;
- ``risk-manager`` assesses each report and sends risk alerts to the executor;
- ``trade-executor`` acts on alerts (its exchange times out now and then, so retries
  show up) and records how the action turned out against the next market move.

Run it all in one process with ``swarmbus demo``, or as workers::

    swarmbus run examples.trading:fleet
    python -m examples.trading feed --seconds 30     # the synthetic market
"""

from __future__ import annotations

import argparse
import math
import random
import time
import zlib
from dataclasses import dataclass

import anyio
from pydantic import BaseModel

import swarmbus
from swarmbus import Agent, Context, Retry, Signal

__all__ = ["SyntheticMarket", "feed", "fleet", "market_hunter", "risk_manager",
           "trade_executor"]

TREND_BUCKETS = ("bearish", "sideways", "bullish")


class Tick(BaseModel):
    n: int
    price: float
    volume: float
    trend: str
    volatility: str
    #: The market's move over the next tick, known to the simulation only: the executor
    #: uses it to score its own action, as a real one would after the fact.
    next_move: float


@dataclass
class SyntheticMarket:
    """A seeded random walk with trend regimes and occasional whale-sized volume."""

    seed: int = 7
    price: float = 100.0
    n: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.drift = 0.0
        self.vol = 0.01
        self.next_return = self._step()

    def _step(self) -> float:
        if self.rng.random() < 0.05:  # regime change
            self.drift = self.rng.choice((-0.004, 0.0, 0.004))
            self.vol = self.rng.choice((0.005, 0.01, 0.03))
        return self.rng.gauss(self.drift, self.vol)

    def tick(self) -> Tick:
        ret = self.next_return
        self.price *= math.exp(ret)
        self.n += 1
        self.next_return = self._step()
        whale = self.rng.random() < 0.15
        volume = self.rng.lognormvariate(3, 0.5) * (25 if whale else 1)
        trend = ("bearish" if self.drift < 0 else "bullish" if self.drift > 0 else "sideways")
        volatility = "high" if self.vol >= 0.03 else "low" if self.vol <= 0.005 else "medium"
        return Tick(n=self.n, price=round(self.price, 4), volume=round(volume, 2), trend=trend,
                    volatility=volatility, next_move=self.next_return)


market_hunter = Agent("market-hunter", version="1.0.0",
                      pattern_features=["market.trend", "market.volatility"])
risk_manager = Agent("risk-manager", version="1.0.0",
                     pattern_features=["market.trend", "market.volatility"])
trade_executor = Agent("trade-executor", version="1.0.0",
                       pattern_features=["market.trend", "risk.level"])
fleet = [market_hunter, risk_manager, trade_executor]


@market_hunter.on("MARKET_TICK", data=Tick)
async def watch_market(signal: Signal, ctx: Context) -> None:
    tick: Tick = ctx.data
    market = {"trend": tick.trend, "volatility": tick.volatility, "price": tick.price}
    if tick.volume > 200:
        await ctx.publish(
            "WHALE_ACTIVITY", targets=["risk-manager"],
            data={"volume": tick.volume, "price": tick.price, "next_move": tick.next_move},
            severity="high" if tick.volume > 600 else "medium",
            confidence=min(0.99, tick.volume / 1000), context={"market": market, "tick": tick.n},
            recommended_action="MONITOR_CLOSELY",
        )


ACTIONS = ("reduce_exposure", "follow_whale", "hedge")


def _payoff(action: str, move: float) -> float:
    return {"reduce_exposure": -move, "follow_whale": move, "hedge": abs(move) * 0.2}[action]


@risk_manager.on("WHALE_ACTIVITY")
async def assess(signal: Signal, ctx: Context) -> None:
    market = signal.context.get("market", {})
    level = "high" if market.get("volatility") == "high" or signal.severity == "high" else "medium"
    # What worked before under these market conditions? Fall back to a rule of thumb, and
    # explore now and then so every choice keeps being measured.
    known = await ctx.memory.match(signal.context, decision_type="RISK_ASSESSMENT")
    rule = {"bearish": "reduce_exposure", "bullish": "follow_whale"}.get(
        market.get("trend", ""), "hedge")
    explore = zlib.crc32(signal.id.encode()) % 10 == 0
    best = known[0] if known and not explore and known[0].confidence > 0.2 else None
    action = best.choice[0] if best and best.choice else (
        ACTIONS[zlib.crc32(signal.id.encode()) % 3] if explore else rule)
    decision = await ctx.decide(
        "RISK_ASSESSMENT", context=signal.context,
        reasoning={"selected": [action], "confidence": best.confidence if best else 0.5,
                   "memory_influenced": best is not None,
                   "patterns_applied": [best.id] if best else []},
    )
    await ctx.publish(
        "RISK_ALERT", targets=["trade-executor"],
        data={"level": level, "action": action, "next_move": signal.data["next_move"],
              "risk_decision": decision.id},
        severity="high" if level == "high" else "medium",
        context={"market": market, "risk": {"level": level}},
    )


@trade_executor.on("RISK_ALERT")
async def execute(signal: Signal, ctx: Context) -> None:
    # A flaky exchange: about one order in twelve times out on its first try.
    if ctx.attempt == 1 and zlib.crc32(signal.id.encode()) % 12 == 0:
        raise Retry(0.05, reason="exchange timeout")
    started = time.perf_counter()
    action = signal.data["action"]
    decision = await ctx.decide(
        "TRADE_EXECUTION", context=signal.context,
        reasoning={"selected": [action]}, parent_decision_id=signal.data.get("risk_decision"),
    )
    pnl = _payoff(action, float(signal.data["next_move"]))
    quality = max(0.0, min(1.0, 0.5 + pnl * 25))
    latency = (time.perf_counter() - started) * 1000
    await decision.outcome(success=pnl > 0, quality_score=quality, latency_ms=latency,
                           data={"pnl": pnl})
    # The risk manager's choice is judged by the same market move.
    if signal.data.get("risk_decision"):
        await ctx.bus.memory("risk-manager").record_outcome(
            signal.data["risk_decision"], success=pnl > 0, quality_score=quality,
            data={"pnl": pnl})
    ctx.log.debug("order_executed", action=action, pnl=round(pnl, 5))


async def feed(bus: swarmbus.Bus, *, seed: int = 7, rate: float = 40.0,
               seconds: float | None = None) -> int:
    """Publish the synthetic market to ``market-hunter`` at ``rate`` ticks/s."""
    market = SyntheticMarket(seed)
    sent = 0
    start = time.monotonic()
    while seconds is None or time.monotonic() - start < seconds:
        tick = market.tick()
        await bus.publish(Signal(type="MARKET_TICK", source="market-feed",
                                 targets=["market-hunter"], data=tick.model_dump()))
        sent += 1
        await anyio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return sent


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.trading")
    parser.add_argument("command", choices=["feed"])
    parser.add_argument("--redis", default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    async def run() -> None:
        async with swarmbus.connect(args.redis) as bus:
            sent = await feed(bus, seed=args.seed, rate=args.rate, seconds=args.seconds)
            print(f"published {sent} ticks")

    anyio.run(run)


if __name__ == "__main__":
    _main()
