"""The channel layers, where an application reaches for them: ``from trio_channels.layers import ...``.

The same objects as the ``layers`` package's. :class:`~layers.redis.RedisChannelLayer` is
imported on first use, so an application on the in-memory layer never imports redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from layers import (
    BaseChannelLayer,
    ChannelFull,
    ChannelLayerError,
    ChannelLayerUnavailable,
    InMemoryChannelLayer,
    LayerStatistics,
    MessageTooLarge,
    from_url,
)

if TYPE_CHECKING:
    from layers.redis import RedisChannelLayer

__all__ = [
    "BaseChannelLayer",
    "ChannelFull",
    "ChannelLayerError",
    "ChannelLayerUnavailable",
    "InMemoryChannelLayer",
    "LayerStatistics",
    "MessageTooLarge",
    "RedisChannelLayer",
    "from_url",
]


def __getattr__(name: str) -> Any:
    if name == "RedisChannelLayer":
        from layers.redis import RedisChannelLayer

        return RedisChannelLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
