"""pytest fixtures for testing trio_channels apps (registered automatically on install).

* ``channel_layer``: an open in-memory layer for the test;
* ``channels_routing``: the routing ``live_server`` serves — override it in your conftest;
* ``live_server``: the whole stack (interface, workers, in-memory layer) on a free port in the
  test's nursery; its value is a :class:`~trio_channels.server.ServerInfo` (``.url``, ...).

Async fixtures are Trio fixtures, so they work with and without pytest-trio's trio mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

from layers import InMemoryChannelLayer

from .config import DEMO_ROUTING, ServerConfig
from .server import ServerInfo, serve

try:
    from pytest_trio import trio_fixture
except ImportError:  # pragma: no cover - the async fixtures need pytest-trio; the rest works without
    trio_fixture = None


@pytest.fixture
def channels_routing() -> Any:
    """The routing ``live_server`` serves; override this fixture in your conftest.py."""
    return DEMO_ROUTING


if trio_fixture is not None:

    @trio_fixture
    async def channel_layer() -> AsyncIterator[InMemoryChannelLayer]:
        """An open in-memory channel layer."""
        async with InMemoryChannelLayer() as layer:
            yield layer

    @trio_fixture
    async def live_server(nursery: trio.Nursery, channels_routing: Any) -> ServerInfo:
        """The full stack on 127.0.0.1 with a free port, stopped when the test ends."""
        with trio.fail_after(10):
            info: ServerInfo = await nursery.start(
                partial(serve, channels_routing, ServerConfig(bind="127.0.0.1:0"))
            )
        return info
