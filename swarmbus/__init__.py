"""swarmbus: a coordination bus and memory for fleets of cooperating agents."""

from __future__ import annotations

from .agents import Agent as Agent
from .agents import Context as Context
from .agents import Worker as Worker
from .bus import Bus as Bus
from .bus import Consumer as Consumer
from .bus import DeadLetter as DeadLetter
from .bus import Delivery as Delivery
from .bus import GroupInfo as GroupInfo
from .bus import Severity as Severity
from .bus import Signal as Signal
from .bus import SignalStatus as SignalStatus
from .bus import StatusState as StatusState
from .bus import TargetStatus as TargetStatus
from .bus import connect as connect
from .coordinator import Coordinator as Coordinator
from .errors import BusConnectionError as BusConnectionError
from .errors import BusResponseError as BusResponseError
from .errors import ConfigurationError as ConfigurationError
from .errors import Conflict as Conflict
from .errors import DecodeError as DecodeError
from .errors import EffectConflict as EffectConflict
from .errors import HandlerControl as HandlerControl
from .errors import HandlerTimeout as HandlerTimeout
from .errors import InvalidData as InvalidData
from .errors import InvalidSignal as InvalidSignal
from .errors import NotFound as NotFound
from .errors import PayloadTooLarge as PayloadTooLarge
from .errors import Reject as Reject
from .errors import Retry as Retry
from .errors import SignalNotFound as SignalNotFound
from .errors import StateConflict as StateConflict
from .errors import SwarmbusError as SwarmbusError
from .errors import WaitTimeout as WaitTimeout
from .settings import Settings as Settings

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Bus",
    "BusConnectionError",
    "BusResponseError",
    "ConfigurationError",
    "Conflict",
    "Consumer",
    "Context",
    "Coordinator",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "EffectConflict",
    "GroupInfo",
    "HandlerControl",
    "HandlerTimeout",
    "InvalidData",
    "InvalidSignal",
    "NotFound",
    "PayloadTooLarge",
    "Reject",
    "Retry",
    "Settings",
    "Severity",
    "Signal",
    "SignalNotFound",
    "SignalStatus",
    "StateConflict",
    "StatusState",
    "SwarmbusError",
    "TargetStatus",
    "WaitTimeout",
    "Worker",
    "__version__",
    "connect",
]
