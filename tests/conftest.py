"""Shared fixtures: nothing here mocks our own components."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio.testing

import layers.base

from .redis_server import RedisCluster, RedisServer

# Owned sends (the interface's messages) are checked in full throughout the suite, in this
# process and in the servers it starts: a message the interface builds that a user's send
# would refuse fails its test instead of passing unnoticed (production trusts the interface).
os.environ["TRIO_CHANNELS_CHECK_OWNED"] = "1"
layers.base.CHECK_OWNED = True


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    """A mock clock that jumps whenever every task is blocked (in-memory transports only)."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[list[RedisServer]]:
    """Three redis-server processes of our own for the whole session (tests use unique prefixes)."""
    servers = [RedisServer().start() for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of three primaries for the whole session (each pytest-xdist worker has
    its own, on its own ports; tests use unique prefixes)."""
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that kill and restart it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


#: The tutorial's folder, finished: the examples run from there, as the tutorial runs them.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def in_examples(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from ``examples/`` with it on ``sys.path``, as ``python -m trio_channels`` run there does
    (the examples' pages and import paths are relative to the tutorial's folder)."""
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return EXAMPLES
