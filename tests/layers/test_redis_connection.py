"""The Trio-native Redis connection against a real redis-server."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import trio
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoPermissionError,
    NoScriptError,
    ResponseError,
)

from layers.redis import ConnectionPool, RedisAddress, RedisConnection

from ..redis_server import RedisServer


async def test_pipelined_callers_get_their_own_replies(redis_servers: list[RedisServer]) -> None:
    """200 concurrent callers on one connection each get the reply to their own command."""
    address = RedisAddress.from_url(redis_servers[0].url)
    async with trio.open_nursery() as nursery:
        connection = await RedisConnection.open(address, nursery)
        results: dict[int, bytes] = {}

        async def caller(index: int) -> None:
            await trio.sleep(random.random() / 100)
            results[index] = await connection.execute("ECHO", f"value-{index}")

        async with trio.open_nursery() as callers:
            for index in range(200):
                callers.start_soon(caller, index)
        assert results == {index: f"value-{index}".encode() for index in range(200)}
        await connection.aclose()


async def test_cancelled_caller_never_leaks_its_reply(redis_servers: list[RedisServer]) -> None:
    """A caller cancelled mid-request: its reply is dropped, the next caller gets its own."""
    address = RedisAddress.from_url(redis_servers[0].url)
    async with trio.open_nursery() as nursery:
        connection = await RedisConnection.open(address, nursery)
        with trio.move_on_after(0.05) as scope:
            await connection.execute("BLPOP", "tc-nothing-here", 1)  # blocks about a second
        assert scope.cancelled_caught
        # The BLPOP's reply (nil) arrives later and must not be taken for this one.
        assert await connection.execute("ECHO", "mine") == b"mine"
        with trio.fail_after(5):
            await trio.sleep(1.1)
            assert await connection.execute("ECHO", "still mine") == b"still mine"
        await connection.aclose()


async def test_error_replies_are_redis_py_exceptions(redis_servers: list[RedisServer]) -> None:
    """Error replies raise redis-py's classes; the connection stays usable."""
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress.from_url(redis_servers[0].url), nursery)
        await pool.execute("SET", "tc-string", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await pool.execute("LPUSH", "tc-string", "y")
        connection = await pool.shared()
        replies = await connection.execute_many([("ECHO", "a"), ("INCR", "tc-string"), ("ECHO", "b")])
        assert replies[0] == b"a" and isinstance(replies[1], ResponseError) and replies[2] == b"b"
        await pool.aclose()


async def test_error_replies_map_to_redis_py_subclasses(redis_servers: list[RedisServer]) -> None:
    """NOSCRIPT, NOPERM, WRONGPASS and ERR replies become redis-py's classes, with the text
    redis-py gives them (the first word dropped), and the connection stays usable."""
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress.from_url(redis_servers[0].url), nursery)
        with pytest.raises(NoScriptError, match=r"^No matching script"):
            await pool.execute("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match=r"^unknown command") as unknown:
            await pool.execute("NO-SUCH-COMMAND")
        assert type(unknown.value) is ResponseError
        with pytest.raises(AuthenticationError):
            await pool.execute("AUTH", "nobody", "wrong")
        await pool.execute("ACL", "SETUSER", "tc-reader", "on", ">pw", "~*", "+get")
        try:
            connection = await pool.shared()
            await connection.execute("AUTH", "tc-reader", "pw")
            with pytest.raises(NoPermissionError):
                await connection.execute("SET", "tc-key", "x")
            assert await connection.execute("GET", "tc-missing") is None
        finally:
            await pool.aclose()
            admin = ConnectionPool(RedisAddress.from_url(redis_servers[0].url), nursery)
            await admin.execute("ACL", "DELUSER", "tc-reader")
            await admin.aclose()


def test_no_private_redis_py_module_is_imported() -> None:
    """Regression (issue 11): the packages import only redis-py's public modules (no
    ``redis._parsers``, which moves between releases)."""
    root = Path(__file__).resolve().parents[2]
    private = []
    files = [
        file
        for package in ("layers", "interface", "trio_channels")
        for file in (root / package).rglob("*.py")
    ]
    assert len(files) > 20
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            private += [f"{file.name}: {name}" for name in names if name.startswith("redis._")]
    assert private == []


async def test_connection_errors_are_mapped(redis_server: RedisServer) -> None:
    """A dead server is redis-py's ConnectionError naming the address, never a raw OSError."""
    address = RedisAddress.from_url(redis_server.url)
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(address, nursery)
        assert await pool.execute("PING") in (b"PONG", "PONG", True)
        redis_server.stop()
        with pytest.raises(ConnectionError, match=str(redis_server.port)):
            await pool.execute("PING")
        with pytest.raises(ConnectionError):  # reconnecting fails the same way
            await pool.execute("PING")
        redis_server.start()
        assert await pool.execute("ECHO", "back") == b"back"  # a new connection on demand
        await pool.aclose()


async def test_password_and_database() -> None:
    """URLs with a password and a database authenticate and select; a wrong password is refused."""
    server = RedisServer().start()
    try:
        async with trio.open_nursery() as nursery:
            pool = ConnectionPool(RedisAddress.from_url(f"redis://127.0.0.1:{server.port}/3"), nursery)
            await pool.execute("CONFIG", "SET", "requirepass", "s3cret")
            await pool.aclose()
            good = ConnectionPool(
                RedisAddress.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/3"), nursery
            )
            await good.execute("SET", "k", "in-db-3")
            assert await good.execute("GET", "k") == b"in-db-3"
            await good.aclose()
            bad = ConnectionPool(RedisAddress.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0"), nursery)
            with pytest.raises(AuthenticationError):
                await bad.execute("PING")
            await bad.aclose()
    finally:
        server.cleanup()


def test_address_from_urls() -> None:
    """redis://, rediss:// and unix:// URLs parse with redis-py's parser; bad ones name the URL."""
    assert RedisAddress.from_url("redis://:pw@example.com:6380/2") == RedisAddress(
        host="example.com", port=6380, db=2, password="pw"
    )
    assert RedisAddress.from_url("rediss://example.com").tls
    assert RedisAddress.from_url("unix:///tmp/redis.sock?db=1") == RedisAddress(path="/tmp/redis.sock", db=1)
    with pytest.raises(ValueError, match="'http://x'"):
        RedisAddress.from_url("http://x")
