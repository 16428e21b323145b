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
    redacted,
    retry_when_full,
    send_or_wait,
    validate_channel_name,
    validate_group_name,
    validate_message,
)
from .groups import HISTORY_KEY, CannotRecover, GroupHistory, GroupSendReport
from .inmemory import InMemoryChannelLayer

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HISTORY_KEY",
    "BaseChannelLayer",
    "CannotRecover",
    "CapacityMap",
    "ChannelFull",
    "ChannelLayerError",
    "ChannelLayerUnavailable",
    "GroupHistory",
    "GroupSendReport",
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
    * ``redis+sentinel://[[user]:password@]host1:26379,host2:26379/SERVICE_NAME/DB`` (and
      ``rediss+sentinel://`` for TLS): the Redis layer on the primary that Redis Sentinel
      manages for ``SERVICE_NAME``, following it through failovers. The password is the
      primary's; sentinels with a password of their own take ``?sentinel_password=…``
      (``sentinel_username``, ``sentinel_socket_timeout`` too). Several such URLs, or a mix
      with ``redis://`` ones, separated by commas, shard.
    * ``redis-cluster://[[user]:password@]host1:7000,host2:7001/`` (and ``rediss-cluster://``):
      the Redis layer on a Redis Cluster, its keys spread over the cluster's slots
      (``?shards=12``: how many hash tags; the same in every process). The nodes named are
      where it first asks for the slot map; it finds the rest and follows failovers.

    Raises :exc:`ValueError` naming the URL if the scheme or an option is not understood.
    """
    if not isinstance(url, str):
        raise TypeError(f"layer URL must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise ValueError(
                f"layer URL {redacted(url)!r} is invalid: write it as 'memory://' (no host or path)"
            )
        return InMemoryChannelLayer(**{**query_options(url, parts.query, strict=True), **options})
    if scheme in (
        "redis",
        "rediss",
        "unix",
        "redis+sentinel",
        "rediss+sentinel",
        "redis-cluster",
        "rediss-cluster",
    ):
        try:
            from .redis import RedisChannelLayer
        except ImportError as exc:
            raise ValueError(
                f"layer URL {redacted(url)!r} needs the Redis layer, which failed to import: {exc}"
            ) from exc
        return RedisChannelLayer.from_url(url, **options)
    raise ValueError(
        f"layer URL {redacted(url)!r} is invalid: unknown scheme {parts.scheme!r}; "
        "use memory://, redis://host:6379/0, rediss://, unix://, redis+sentinel://host:26379/mymaster/0 "
        "or redis-cluster://host1:7000,host2:7001/"
    )
