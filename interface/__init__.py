"""Interface servers: network connections <-> channel layer messages (ASGI-1 formats).

This package knows nothing of routing or consumers; it depends only on :mod:`layers`.
"""

from __future__ import annotations

from .asgi import InterfaceApp
from .common import ConnectionInfo, InterfaceConfig, WebSocketClosed
from .core import InterfaceServer
from .listeners import BindError
from .main import serve_interface
from .websocket import serve_websocket_listener

__all__ = [
    "BindError",
    "ConnectionInfo",
    "InterfaceApp",
    "InterfaceConfig",
    "InterfaceServer",
    "WebSocketClosed",
    "serve_interface",
    "serve_websocket_listener",
]
