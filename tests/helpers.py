"""Tiny test helpers (no stand-ins for our own components)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from layers import BaseChannelLayer

#: How long "nothing arrives" waits. Virtual under MockClock; real (and short) otherwise.
QUIET = 0.3


async def receive_now(
    layer: BaseChannelLayer, channels: Sequence[str], timeout: float = 5
) -> tuple[str, dict[str, Any]]:
    """Receive one message, failing the test if none arrives within *timeout* seconds."""
    with trio.fail_after(timeout):
        return await layer.receive(channels)


async def assert_nothing(layer: BaseChannelLayer, channels: Sequence[str], wait: float = QUIET) -> None:
    """Assert no message arrives on *channels* within *wait* seconds."""
    with trio.move_on_after(wait):
        got = await layer.receive(channels)
        raise AssertionError(f"expected nothing on {channels!r}, got {got!r}")
