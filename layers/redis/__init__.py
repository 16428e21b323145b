"""The Redis channel layer: many processes, many machines."""

from __future__ import annotations

from .connection import ConnectionPool, RedisAddress, RedisConnection
from .layer import RedisChannelLayer, consistent_hash

__all__ = ["ConnectionPool", "RedisAddress", "RedisChannelLayer", "RedisConnection", "consistent_hash"]
