"""Agents the CLI tests run with ``swarmbus run tests.cli.app_agents:risk``.

``PING`` sleeps ``data.sleep`` seconds, then prints ``done <signal id>`` on stdout (so a
test knows exactly which handlers finished); ``DOOMED`` is always rejected.
"""

from __future__ import annotations

import anyio

from swarmbus import Agent, Context, Reject, Signal

risk = Agent("risk", version="1.2.3")


@risk.on("PING")
async def ping(signal: Signal, ctx: Context) -> None:
    print("start", signal.id, flush=True)
    await anyio.sleep(float(signal.data.get("sleep", 0)))
    print("done", signal.id, flush=True)


@risk.on("DOOMED")
async def doomed(signal: Signal, ctx: Context) -> None:
    raise Reject(f"refusing {signal.data.get('why', 'everything')}")


#: Not an agent: ``swarmbus run tests.cli.app_agents:not_an_agent`` is a usage error.
not_an_agent = "risk"
