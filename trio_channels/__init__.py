"""trio_channels: channel layers, groups and routed consumers for Trio applications.

The public door: ``from trio_channels import Channel, Group, route, include, run_worker``.
"""

from __future__ import annotations

from layers.groups import CannotRecover, GroupHistory, GroupSendReport

from .channel import Channel, Group, Message, current_layer, use_layer
from .exceptions import ConsumeLater, DenyConnection
from .routing import Router, include, route, route_class
from .worker import Worker, WorkerStatistics, run_worker

__version__ = "0.1.0.dev0"

__all__ = [
    "CannotRecover",
    "Channel",
    "ConsumeLater",
    "DenyConnection",
    "Group",
    "GroupHistory",
    "GroupSendReport",
    "Message",
    "Router",
    "Worker",
    "WorkerStatistics",
    "__version__",
    "current_layer",
    "include",
    "route",
    "route_class",
    "run_worker",
    "use_layer",
]
