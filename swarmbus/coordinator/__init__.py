"""The coordinator: consolidation, checkpoints, janitor, registry, analytics, backup."""

from __future__ import annotations

from .analytics import AgentStats as AgentStats
from .analytics import Anomaly as Anomaly
from .janitor import JanitorReport as JanitorReport
from .registry import HeldWork as HeldWork
from .service import Coordinator as Coordinator

__all__ = ["AgentStats", "Anomaly", "Coordinator", "HeldWork", "JanitorReport"]
