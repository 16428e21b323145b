"""Channel layers: named FIFO queues plus groups, in memory or in Redis.

This package knows nothing of interface servers or routing. The contract and its pure rules
are :mod:`layers.base`; :mod:`layers.concurrency` holds the structured-concurrency helpers
other packages share.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from ._backend import query_options
from .base import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BaseChannelLayer,
    CapacityMap,
    ChannelFull,
    ChannelLayerError,
    ChannelLayerUnavailable,
    LayerStatistics,
    MembershipLost,
    MessageTooLarge,
    decode_message,
    encode_message,
    non_local_name,
    retry_when_full,
    send_or_wait,
    validate_channel_name,
    validate_group_name,
    validate_message,
)
from .inmemory import InMemoryChannelLayer

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "BaseChannelLayer",
    "CapacityMap",
    "ChannelFull",
    "ChannelLayerError",
    "ChannelLayerUnavailable",
    "InMemoryChannelLayer",
    "LayerStatistics",
    "MembershipLost",
    "MessageTooLarge",
    "decode_message",
    "encode_message",
    "from_url",
    "non_local_name",
    "retry_when_full",
    "send_or_wait",
    "validate_channel_name",
    "validate_group_name",
    "validate_message",
]


def from_url(url: str, **options: Any) -> BaseChannelLayer:
    """Build a channel layer from a URL; keyword *options* override those in the query string.

    * ``memory://`` (optionally ``memory://?expiry=30&capacity=200``): :class:`InMemoryChannelLayer`.
    * ``redis://host:port/db``, ``rediss://…``, ``unix:///path.sock``: the Redis layer, with
      several hosts separated by commas for sharding.

    Raises :exc:`ValueError` naming the URL if the scheme or an option is not understood.
    """
    if not isinstance(url, str):
        raise TypeError(f"layer URL must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"layer URL {url!r} is invalid: write it as 'memory://' (no host or path)")
        return InMemoryChannelLayer(**{**query_options(url, parts.query, strict=True), **options})
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis import RedisChannelLayer
        except ImportError as exc:
            raise ValueError(
                f"layer URL {url!r} needs the Redis layer, which failed to import: {exc}"
            ) from exc
        return RedisChannelLayer.from_url(url, **options)
    raise ValueError(
        f"layer URL {url!r} is invalid: unknown scheme {parts.scheme!r}; "
        "use memory://, redis://host:6379/0, rediss:// or unix://"
    )
