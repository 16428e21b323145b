"""Exceptions a consumer raises to tell the worker something."""

from __future__ import annotations

__all__ = ["ConsumeLater", "DenyConnection", "RequestAborted"]


class ConsumeLater(Exception):
    """Put this message back on its channel to be consumed again later (at most 10 times)."""


class DenyConnection(Exception):
    """Reject this WebSocket connection (from a ``websocket.connect`` consumer): HTTP 403."""


class RequestAborted(ConnectionAbortedError):
    """The request body will never be complete: the client went away, or the body passed the
    size limit (the interface answered 413). Raised by ``Request.from_message``; the worker
    ends the consumer quietly, since there is nobody to answer."""
