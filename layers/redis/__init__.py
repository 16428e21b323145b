"""The Redis channel layer: many processes, many machines."""

from __future__ import annotations

from .cluster import ClusterClient
from .connection import (
    ClusterAddress,
    ConnectionPool,
    RedisAddress,
    RedisConnection,
    SentinelAddress,
    server_address,
)
from .layer import RedisChannelLayer, consistent_hash

__all__ = [
    "ClusterAddress",
    "ClusterClient",
    "ConnectionPool",
    "RedisAddress",
    "RedisChannelLayer",
    "RedisConnection",
    "SentinelAddress",
    "consistent_hash",
    "server_address",
]
