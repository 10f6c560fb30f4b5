"""The bus: signals over Redis Streams, consumer groups and per-target status."""

from __future__ import annotations

from .connection import Bus as Bus
from .connection import connect as connect
from .consume import Consumer as Consumer
from .consume import Delivery as Delivery
from .consume import Handler as Handler
from .keys import Keys as Keys
from .signal import Severity as Severity
from .signal import Signal as Signal
from .signal import derive_id as derive_id
from .signal import new_id as new_id
from .status import DeadLetter as DeadLetter
from .status import GroupInfo as GroupInfo
from .status import SignalStatus as SignalStatus
from .status import StatusState as StatusState
from .status import TargetStatus as TargetStatus

__all__ = [
    "Bus",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "GroupInfo",
    "Handler",
    "Keys",
    "Severity",
    "Signal",
    "SignalStatus",
    "StatusState",
    "TargetStatus",
    "connect",
    "derive_id",
    "new_id",
]
