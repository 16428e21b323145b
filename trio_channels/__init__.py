"""trio_channels: channel layers, groups and routed consumers for Trio applications."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
