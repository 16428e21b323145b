"""trio_channels: channel layers, groups and routed consumers for Trio applications.

The public door: ``from trio_channels import Channel, Group, route, include, serve, ServerConfig``;
the layers are in :mod:`trio_channels.layers`.
"""

from __future__ import annotations

from interface import InterfaceConfig
from layers.groups import CannotRecover, GroupHistory, GroupSendReport

from .channel import Channel, Group, Message, NoReplyChannel, current_layer, use_layer
from .config import ServerConfig
from .exceptions import ConsumeLater, DenyConnection
from .routing import Router, include, route, route_class
from .server import ServerInfo, serve
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
    "InterfaceConfig",
    "Message",
    "NoReplyChannel",
    "Router",
    "ServerConfig",
    "ServerInfo",
    "Worker",
    "WorkerStatistics",
    "__version__",
    "current_layer",
    "include",
    "route",
    "route_class",
    "run_worker",
    "serve",
    "use_layer",
]
