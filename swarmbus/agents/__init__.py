"""Agents: handlers, their context, and the worker that runs them."""

from __future__ import annotations

from .agent import Agent as Agent
from .context import Context as Context
from .decisions import Decision as Decision
from .decisions import DecisionNotFound as DecisionNotFound
from .decisions import DecisionStats as DecisionStats
from .decisions import DecisionType as DecisionType
from .decisions import Outcome as Outcome
from .decisions import Reasoning as Reasoning
from .memory import DecisionHandle as DecisionHandle
from .memory import Memory as Memory
from .memory import NullMemory as NullMemory
from .patterns import Pattern as Pattern
from .registry import Heartbeat as Heartbeat
from .registry import heartbeats as heartbeats
from .state import Checkpoint as Checkpoint
from .state import State as State
from .worker import Worker as Worker

__all__ = [
    "Agent",
    "Checkpoint",
    "Context",
    "Decision",
    "DecisionHandle",
    "DecisionNotFound",
    "DecisionStats",
    "DecisionType",
    "Heartbeat",
    "Memory",
    "NullMemory",
    "Outcome",
    "Pattern",
    "Reasoning",
    "State",
    "Worker",
    "heartbeats",
]
