"""The ``layer`` fixture every backend runs the conformance suite through.

Each backend contributes a factory that makes an *unentered* layer with the suite's settings
(expiry 1 s, group expiry 2 s, capacity 5, as asgiref's own run). In-memory backends run under
an autojumping ``MockClock`` (``layer_clock``), so expiry costs no wall time; backends with
their own clock (Redis) get ``None`` and wait in real time.

The Redis backends run on the newest redis-server found; ``redis-6.2`` runs the suite once more
on an older one (no ``BLMPOP``: the layer's fallback) where both exist (tests/redis_server.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import pytest
import trio.testing

import layers
from layers.redis import RedisChannelLayer

from ..redis_server import RedisServer, legacy_redis_server_binary

EXPIRY = 1
GROUP_EXPIRY = 2
CAPACITY = 5

LayerFactory = Callable[..., layers.BaseChannelLayer]


def _memory_factory(request: pytest.FixtureRequest) -> LayerFactory:
    def make(**overrides: Any) -> layers.BaseChannelLayer:
        options: dict[str, Any] = {"expiry": EXPIRY, "group_expiry": GROUP_EXPIRY, "capacity": CAPACITY}
        return layers.InMemoryChannelLayer(**{**options, **overrides})

    return make


def _redis_layers(servers: list[RedisServer]) -> LayerFactory:
    prefix = f"t{uuid.uuid4().hex[:12]}"

    def make(**overrides: Any) -> layers.BaseChannelLayer:
        options: dict[str, Any] = {
            "hosts": [server.url for server in servers],
            "prefix": prefix,
            "expiry": EXPIRY,
            "group_expiry": GROUP_EXPIRY,
            "capacity": CAPACITY,
        }
        return RedisChannelLayer(**{**options, **overrides})

    return make


def _redis_factory(shards: int) -> Callable[[pytest.FixtureRequest], LayerFactory]:
    def factory(request: pytest.FixtureRequest) -> LayerFactory:
        return _redis_layers(request.getfixturevalue("redis_servers")[:shards])

    return factory


def _legacy_redis_factory(request: pytest.FixtureRequest) -> LayerFactory:
    return _redis_layers(request.getfixturevalue("legacy_redis_servers"))


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], LayerFactory]] = {
    "memory": _memory_factory,
    "redis": _redis_factory(1),
    "redis-3-shards": _redis_factory(3),
}
VIRTUAL_TIME = {"memory"}
#: How many servers of its own each backend needs for an outage (none: it has no server to lose).
SERVERS = {"memory": 0, "redis": 1, "redis-3-shards": 3}
#: The redis-server binary of each backend that does not run on the newest.
BINARIES: dict[str, str] = {}
LEGACY_BINARY = legacy_redis_server_binary()
if LEGACY_BINARY is not None:
    BACKENDS["redis-6.2"] = _legacy_redis_factory
    SERVERS["redis-6.2"] = 1
    BINARIES["redis-6.2"] = LEGACY_BINARY


@pytest.fixture(scope="session")
def legacy_redis_servers() -> Iterator[list[RedisServer]]:
    """One redis-server of the older binary for the whole session (``redis-6.2`` backend)."""
    assert LEGACY_BINARY is not None
    server = RedisServer(binary=LEGACY_BINARY).start()
    try:
        yield [server]
    finally:
        server.cleanup()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def layer_factory(backend: str, request: pytest.FixtureRequest) -> LayerFactory:
    """Makes unentered layers of the current backend with the suite's settings."""
    return BACKENDS[backend](request)


@pytest.fixture
def layer_clock(backend: str) -> trio.testing.MockClock | None:
    """Request this in tests that wait for expiry: virtual time where the backend allows."""
    return trio.testing.MockClock(autojump_threshold=0) if backend in VIRTUAL_TIME else None


@pytest.fixture
async def layer(layer_factory: LayerFactory) -> AsyncIterator[layers.BaseChannelLayer]:
    async with layer_factory() as opened:
        await opened.flush()
        yield opened


@attrs.define
class Outage:
    """Layers of the current backend on servers of this test's own, which it may stop and start."""

    factory: LayerFactory
    servers: list[RedisServer]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def start(self) -> None:
        for server in self.servers:
            server.start()


@pytest.fixture
def outage(backend: str, request: pytest.FixtureRequest) -> Iterator[Outage]:
    """For tests that take the backend's servers away (the in-memory layer has none)."""
    binary = BINARIES.get(backend)
    servers = [
        (RedisServer(binary=binary) if binary else RedisServer()).start() for _ in range(SERVERS[backend])
    ]
    try:
        yield Outage(_redis_layers(servers) if servers else _memory_factory(request), servers)
    finally:
        for server in servers:
            server.cleanup()
