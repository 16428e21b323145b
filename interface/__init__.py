"""Interface servers: network connections <-> channel layer messages (ASGI-1 formats).

This package knows nothing of routing or consumers; it depends only on :mod:`layers`.
"""

from __future__ import annotations

from .asgi import InterfaceApp, serve_interface
from .core import ConnectionInfo, InterfaceConfig, InterfaceServer, WebSocketClosed
from .listeners import BindError
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
