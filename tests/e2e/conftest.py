"""Servers on real sockets for end-to-end tests (real time, capped with fail_after)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio

from trio_channels import ServerConfig
from trio_channels.server import ServerInfo, serve

StartServer = Callable[..., Awaitable[ServerInfo]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """Start serve() on a free port in the test's nursery; returns its ServerInfo."""

    async def start(routing: Any, **options: Any) -> ServerInfo:
        """*options* are :class:`ServerConfig` fields (``bind`` defaults to a free port)."""
        config = ServerConfig(**{"bind": ["127.0.0.1:0"], **options})
        with trio.fail_after(10):
            info: ServerInfo = await nursery.start(partial(serve, routing, config))
        return info

    return start


def ws_url(base: str, path: str) -> str:
    """The ws:// URL of *path* on the server at *base* (an http:// or ws:// URL)."""
    return base.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/") + path
