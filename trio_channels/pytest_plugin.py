"""pytest fixtures for testing trio_channels apps (registered automatically on install).

* ``channel_layer``: an open in-memory layer for the test;
* ``channels_routing``: the routing ``channels_live_server`` serves — override it in your conftest;
* ``channels_live_server``: the whole stack (interface, workers, in-memory layer) on a free
  port in the test's nursery; its value is a :class:`~trio_channels.ServerInfo` (``.url``, ...).
  (Not ``live_server``: that is pytest-django's.)

The async fixtures are Trio fixtures (pytest-trio), and they work whether or not the project
sets pytest-trio's ``trio_mode``: an ``async def`` test that uses one is run by pytest-trio as
if marked ``@pytest.mark.trio``. A plain ``def`` test, or a test marked for asyncio or anyio,
that asks for one fails at once with a message saying so.
"""

from __future__ import annotations

import inspect
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
except ImportError:  # pragma: no cover - exercised by users without pytest-trio
    trio_fixture = None

#: The fixtures that need a Trio test.
TRIO_FIXTURES = ("channel_layer", "channels_live_server")
_OTHER_LOOPS = ("asyncio", "anyio")


@pytest.fixture
def channels_routing() -> Any:
    """The routing ``channels_live_server`` serves; override this fixture in your conftest.py."""
    return DEMO_ROUTING


if trio_fixture is not None:

    @trio_fixture
    async def channel_layer() -> AsyncIterator[InMemoryChannelLayer]:
        """An open in-memory channel layer."""
        async with InMemoryChannelLayer() as layer:
            yield layer

    @trio_fixture
    async def channels_live_server(nursery: trio.Nursery, channels_routing: Any) -> ServerInfo:
        """The full stack on 127.0.0.1 with a free port, stopped when the test ends."""
        with trio.fail_after(10):
            info: ServerInfo = await nursery.start(
                partial(serve, channels_routing, ServerConfig(bind="127.0.0.1:0"))
            )
        return info

else:  # pragma: no cover - exercised by users without pytest-trio

    @pytest.fixture
    def channel_layer() -> None:
        pytest.fail("the channel_layer fixture needs pytest-trio: pip install pytest-trio", pytrace=False)

    @pytest.fixture
    def channels_live_server() -> None:
        pytest.fail(
            "the channels_live_server fixture needs pytest-trio: pip install pytest-trio", pytrace=False
        )


def _ours(item: pytest.Item) -> list[str]:
    return [name for name in TRIO_FIXTURES if name in getattr(item, "fixturenames", ())]


@pytest.hookimpl(trylast=True)  # after pytest-trio's own marking in trio_mode
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``async def`` tests that use our Trio fixtures as Trio tests (no ``trio_mode`` needed)."""
    for item in items:
        if not _ours(item) or item.get_closest_marker("trio") is not None:
            continue
        if any(item.get_closest_marker(name) is not None for name in _OTHER_LOOPS):
            continue  # reported at setup
        if inspect.iscoroutinefunction(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.trio)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test our Trio fixtures cannot serve fails with the fix, not pytest-trio's riddle."""
    used = _ours(item)
    if not used or item.get_closest_marker("trio") is not None:
        return
    names = ", ".join(used)
    if any(item.get_closest_marker(name) is not None for name in _OTHER_LOOPS):
        pytest.fail(
            f"{item.name} uses {names}, which run on Trio: mark it @pytest.mark.trio, not for asyncio or anyio",
            pytrace=False,
        )
    pytest.fail(
        f"{item.name} uses {names}, which are Trio fixtures: make the test 'async def'", pytrace=False
    )
