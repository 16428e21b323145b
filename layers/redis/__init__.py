"""The Redis channel layer: many processes, many machines."""

from __future__ import annotations

from .connection import ConnectionPool, RedisAddress, RedisConnection, SentinelAddress, server_address
from .layer import RedisChannelLayer, consistent_hash

__all__ = [
    "ConnectionPool",
    "RedisAddress",
    "RedisChannelLayer",
    "RedisConnection",
    "SentinelAddress",
    "consistent_hash",
    "server_address",
]
