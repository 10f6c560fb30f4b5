"""Agents for the staying-up tests (``swarmbus run tests.agents.staying_app:fleet``).

- ``alpha`` on ORDER: publishes one FILL to ``beta`` (a deterministic effect), or, per
  ``signal.data["mode"]``, blocks the event loop (``time.sleep``) or awaits, counting its
  calls in Redis so a test can see a handler run twice.
- ``beta`` on ORDER and FILL: counts and returns.
- ``sync`` on BLOCKING: a plain ``def`` handler that sleeps in its worker thread.
"""

from __future__ import annotations

import time

import anyio

from swarmbus import Agent, Context, Signal

alpha = Agent("alpha", version="1.0.0")
beta = Agent("beta", version="1.0.0")
sync = Agent("sync", version="1.0.0")
fleet = [alpha, beta]


def calls_key(ctx: Context) -> str:
    return f"{ctx.bus.settings.namespace}:test:calls"


@alpha.on("ORDER")
async def order(signal: Signal, ctx: Context) -> None:
    mode = signal.data.get("mode")
    if mode is not None:
        await ctx.bus.redis.hincrby(calls_key(ctx), f"alpha:{signal.id}", 1)
    if mode == "block":
        time.sleep(float(signal.data["seconds"]))  # noqa: ASYNC251 - the point: a blocking call
    elif mode == "sleep":
        await anyio.sleep(float(signal.data["seconds"]))
    await ctx.publish("FILL", targets=["beta"], data={"order": signal.id})


@beta.on("ORDER")
async def see_order(signal: Signal, ctx: Context) -> None:
    return None


@beta.on("FILL")
async def fill(signal: Signal, ctx: Context) -> None:
    return None


@sync.on("BLOCKING")
def blocking(signal: Signal, ctx: Context) -> None:
    ctx.call(ctx.bus.redis.hincrby, calls_key(ctx), f"sync:{signal.id}", 1)
    time.sleep(float(signal.data["seconds"]))
