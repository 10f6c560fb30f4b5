"""Agents: handlers, their context, and the worker that runs them."""

from __future__ import annotations

from .agent import Agent as Agent
from .context import Context as Context
from .registry import Heartbeat as Heartbeat
from .registry import heartbeats as heartbeats
from .worker import Worker as Worker

__all__ = ["Agent", "Context", "Heartbeat", "Worker", "heartbeats"]
