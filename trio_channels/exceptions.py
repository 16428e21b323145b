"""Exceptions a consumer raises to tell the worker something."""

from __future__ import annotations

__all__ = ["ConsumeLater", "DenyConnection"]


class ConsumeLater(Exception):
    """Put this message back on its channel to be consumed again later (at most 10 times)."""


class DenyConnection(Exception):
    """Reject this WebSocket connection (from a ``websocket.connect`` consumer): HTTP 403."""
