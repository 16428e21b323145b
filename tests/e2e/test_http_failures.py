"""HTTP failures get an answer at once: consumer errors, bad static paths, body limits, bad headers.

Real server (``serve()``), real sockets, real clients (httpx, or a raw TCP stream where httpx
cannot misbehave the way a client must here). ``http_timeout`` is 30 s and every wait is
capped well under it, so a client left waiting for the timeout fails the test.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from interface import InterfaceConfig
from layers import InMemoryChannelLayer
from layers.redis import RedisChannelLayer
from trio_channels import Message, route
from trio_channels.exceptions import RequestAborted
from trio_channels.http import Request, Response, send_response

from ..redis_server import RedisServer
from .conftest import StartServer

#: Long enough that a client answered only by http_timeout fails the test's fail_after(10).
CONFIG = InterfaceConfig(http_timeout=30)
KIB = 1024
MIB = 1024 * KIB


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            return await client.get(url)


# ----------------------------------------------------------------------------- item 2: consumer failures


async def test_consumer_that_raises_gets_500_at_once(start_server: StartServer) -> None:
    """A consumer that raises before responding: the client gets a 500 now, not a 503 at http_timeout."""

    async def broken(message: Message) -> None:
        raise RuntimeError("a bug in the consumer")

    info = await start_server([route("http.request", broken)], interface_config=CONFIG)
    response = await get(info.url + "/broken")
    assert response.status_code == 500
    assert "Internal Server Error" in response.text


async def test_consumer_timeout_gets_500_at_once(start_server: StartServer) -> None:
    """A consumer cancelled by consumer_timeout: the client gets a 500 as soon as it is cancelled."""

    async def stuck(message: Message) -> None:
        await trio.sleep_forever()

    info = await start_server([route("http.request", stuck)], interface_config=CONFIG, consumer_timeout=0.5)
    response = await get(info.url + "/stuck")
    assert response.status_code == 500
    assert "timed out" in response.text


async def test_consumer_that_raises_after_buffering_a_partial_response_gets_500(
    start_server: StartServer,
) -> None:
    """A buffered response start that never finished is replaced by the 500, never sent half-built."""

    async def half(message: Message) -> None:
        await message.reply_channel.send({"status": 200, "content": b"partial", "more_content": True})
        raise RuntimeError("failed half-way through building the response")

    info = await start_server([route("http.request", half)], interface_config=CONFIG)
    response = await get(info.url + "/half")
    assert response.status_code == 500
    assert "partial" not in response.text


async def test_consumer_that_raises_mid_stream_aborts_the_response(start_server: StartServer) -> None:
    """A streamed response cut off by an error is aborted at once: the client sees it incomplete."""

    async def streaming(message: Message) -> None:
        await message.reply_channel.send(
            {"status": 200, "headers": [[b"content-type", b"text/plain"]], "more_content": True},
            immediately=True,
        )
        await message.reply_channel.send({"content": b"part;", "more_content": True}, immediately=True)
        raise RuntimeError("failed mid-stream")

    info = await start_server([route("http.request", streaming)], interface_config=CONFIG)
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            async with client.stream("GET", info.url + "/stream") as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()


async def test_consumer_that_raises_after_a_complete_response_keeps_it(start_server: StartServer) -> None:
    """A complete buffered response is still delivered when the consumer raises afterwards."""

    async def late_failure(message: Message) -> None:
        await send_response(message, Response("done", content_type="text/plain"))
        raise RuntimeError("failed after responding")

    info = await start_server([route("http.request", late_failure)], interface_config=CONFIG)
    response = await get(info.url + "/late")
    assert (response.status_code, response.text) == (200, "done")


@pytest.fixture
def static_root(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    root.mkdir()
    (root / "a.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("outside the root")
    return root


@pytest.mark.parametrize(
    "path",
    [
        "/static/a.txt%00.png",  # NUL byte: ValueError in the old handler
        "/static/%2e%2e/secret.txt",  # escapes the root
        "/static/%FF.txt",  # not UTF-8
        "/static/" + "a" * 300,  # name too long for the file system
        "/static/a.txt/",  # a file is not a directory
        "/nowhere%FF",  # not UTF-8, on the 404 page
    ],
)
async def test_bad_static_paths_are_404(start_server: StartServer, static_root: Path, path: str) -> None:
    """Paths that name no file under --static-root are a plain 404, never an exception."""
    info = await start_server([], static_root=str(static_root), interface_config=CONFIG)
    response = await get(info.url + path)
    assert response.status_code == 404
    assert "outside the root" not in response.text
    served = await get(info.url + "/static/a.txt")
    assert (served.status_code, served.text) == (200, "hello")


async def test_bad_path_on_the_default_404_page(start_server: StartServer) -> None:
    """The default 404 (no static root) names a path that is not UTF-8 without failing."""
    info = await start_server([], interface_config=CONFIG)
    response = await get(info.url + "/caf%E9")
    assert response.status_code == 404
    assert "/caf" in response.text


# ----------------------------------------------------------------------------- item 5: request bodies


async def test_body_over_the_limit_after_the_first_chunk_is_413(start_server: StartServer) -> None:
    """A chunked upload that passes max_body_size after 512 KiB: 413, and the consumer is told."""
    outcomes: list[str] = []
    done = trio.Event()

    async def upload(message: Message) -> None:
        try:
            await Request.from_message(message)
            outcomes.append("complete")
        except RequestAborted:
            outcomes.append("aborted")
            raise
        finally:
            done.set()

    info = await start_server(
        [route("http.request", upload)],
        interface_config=InterfaceConfig(http_timeout=30, max_body_size=MIB),
    )

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(48):  # 3 MiB in 64 KiB pieces; no Content-Length, so it must be counted
            yield b"x" * (64 * KIB)

    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.post(info.url + "/upload", content=pieces())
            await done.wait()
    assert response.status_code == 413
    assert outcomes == ["aborted"]


async def test_declared_body_over_the_limit_is_413(start_server: StartServer) -> None:
    """A Content-Length over max_body_size (past 512 KiB) is refused with 413 before the body is read."""
    seen: list[str] = []

    async def upload(message: Message) -> None:
        seen.append(message["path"])
        await send_response(message, Response("read"))

    info = await start_server(
        [route("http.request", upload)],
        interface_config=InterfaceConfig(http_timeout=30, max_body_size=MIB),
    )
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.post(info.url + "/upload", content=b"x" * (3 * MIB))
            after = await client.post(info.url + "/small", content=b"x" * KIB)
    assert response.status_code == 413
    assert after.status_code == 200
    assert seen == ["/small"]


async def _send_part_and_leave(url: str, sent: int, declared: int = 4 * MIB) -> None:
    """A raw client: the head of a POST declaring *declared* bytes, *sent* of them, then a close."""
    stream = await trio.open_tcp_stream(*host_port(url))
    head = f"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {declared}\r\n\r\n".encode()
    await stream.send_all(head + b"x" * sent)
    await stream.aclose()


async def test_client_leaving_mid_body_tells_the_consumer(start_server: StartServer) -> None:
    """A client that closes half-way through a streamed body: the body_channel reader gets closed: True."""
    chunks: list[dict[str, Any]] = []
    started, done = trio.Event(), trio.Event()

    async def upload(message: Message) -> None:
        started.set()
        while True:
            _, chunk = await message.channel_layer.receive([message["body_channel"]])
            chunks.append(chunk)
            if chunk.get("closed") or not chunk.get("more_content"):
                break
        done.set()

    info = await start_server([route("http.request", upload)], interface_config=CONFIG)
    with trio.fail_after(10):
        await _send_part_and_leave(info.url, sent=MIB + 100 * KIB)
        await started.wait()
        await done.wait()
    assert chunks[-1] == {"content": b"", "more_content": False, "closed": True}
    assert sum(len(chunk["content"]) for chunk in chunks) < MIB + 100 * KIB


async def test_client_leaving_mid_body_aborts_request_from_message(start_server: StartServer) -> None:
    """Request.from_message raises RequestAborted promptly when the client leaves mid-body."""
    outcomes: list[str] = []
    done = trio.Event()

    async def upload(message: Message) -> None:
        try:
            request = await Request.from_message(message)
            outcomes.append(f"complete {len(request.body)}")
        except RequestAborted:
            outcomes.append("aborted")
        finally:
            done.set()

    info = await start_server([route("http.request", upload)], interface_config=CONFIG)
    with trio.fail_after(10):
        await _send_part_and_leave(info.url, sent=2 * MIB)
        await done.wait()
    assert outcomes == ["aborted"]


async def test_client_leaving_in_the_first_chunk_sends_no_request(start_server: StartServer) -> None:
    """A body cut short within its first 512 KiB never reaches a consumer as if it were complete."""
    seen: list[tuple[str, int]] = []

    async def consumer(message: Message) -> None:
        seen.append((message["path"], len(message["body"])))
        await send_response(message, Response("ok"))

    info = await start_server([route("http.request", consumer)], interface_config=CONFIG, concurrency=1)
    await _send_part_and_leave(info.url, sent=100 * KIB, declared=200 * KIB)
    await trio.sleep(0.3)  # the server sees the close before the next request's head
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.post(info.url + "/after", content=b"y" * 10)
    assert response.status_code == 200
    assert seen == [("/after", 10)]


# ----------------------------------------------------------------------------- item 7: bad headers


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        ([b"x-injected", b"a\r\nSet-Cookie: evil=1"], "must not contain"),
        ([b"x-nul", b"a\x00b"], "must not contain"),
        ([b"bad name", b"value"], "must be a token"),
        ([b"content-length", b"ten"], "content-length"),
    ],
)
async def test_bad_response_header_is_500_with_one_error_line(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, header: list[bytes], rule: str
) -> None:
    """A response header h11 would refuse: 500, one error line naming it, no Hypercorn traceback."""
    caplog.set_level(logging.INFO)

    async def consumer(message: Message) -> None:
        await message.reply_channel.send({"status": 200, "headers": [header], "content": b"body"})

    info = await start_server([route("http.request", consumer)], interface_config=CONFIG)
    response = await get(info.url + "/")
    assert response.status_code == 500
    assert "evil" not in response.headers.get("set-cookie", "")
    await trio.sleep(0.1)  # anything logged after the response went out
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    (error,) = errors
    message = error.getMessage()
    assert repr(header[0]) in message and rule in message, message
    assert error.exc_info is None
    assert not [record for record in caplog.records if record.name.startswith("interface.hypercorn")]


# ----------------------------------------------------------------------------- drops are warnings


async def test_dropped_http_disconnect_is_a_rate_limited_warning(
    redis_servers: list[RedisServer], start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An http.disconnect the full layer refuses is a WARNING: one line for many drops. (On a
    shared layer the interface cannot know whether a worker elsewhere consumes it: it sends.)"""
    caplog.set_level(logging.WARNING, logger="interface")

    async def ok(message: Message) -> None:
        await send_response(message, Response("ok"))

    layer = RedisChannelLayer(
        hosts=[redis_servers[0].url],
        prefix=f"t{uuid.uuid4().hex[:12]}",
        channel_capacity={"http.disconnect": 1},
    )
    info = await start_server(
        [route("http.request", ok)],
        layer=layer,
        exclude_channels=["http.disconnect"],
        interface_config=CONFIG,
    )
    for index in range(4):
        assert (await get(info.url + f"/{index}")).status_code == 200
    await trio.sleep(0.5)  # the last request's http.disconnect is sent after its response
    warnings = [record.getMessage() for record in caplog.records if "http.disconnect" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'GET /1 HTTP/1.1'" in warnings[0] and "ChannelFull" in warnings[0]


@pytest.mark.parametrize("routed", [True, False])
async def test_http_disconnect_only_where_something_consumes_it(
    start_server: StartServer, routed: bool
) -> None:
    """Issue 12: with every consumer in this process (the in-memory layer), http.disconnect is
    sent only if a route of the application's takes it, not to the default no-op."""
    disconnects: list[str] = []

    async def ok(message: Message) -> None:
        await send_response(message, Response("ok"))

    async def disconnected(message: Message) -> None:
        disconnects.append(message["path"])

    routing = [route("http.request", ok)]
    if routed:
        routing.append(route("http.disconnect", disconnected))
    layer = InMemoryChannelLayer()
    info = await start_server(routing, layer=layer, interface_config=CONFIG)
    for index in range(3):
        assert (await get(info.url + f"/{index}")).status_code == 200
    with trio.fail_after(10):
        while routed and len(disconnects) < 3:  # noqa: ASYNC110
            await trio.sleep(0.01)
    sent = (await layer.statistics("http.disconnect")).messages_count
    assert (sent, disconnects) == ((3, ["/0", "/1", "/2"]) if routed else (0, []))


async def test_http_timeout_is_a_rate_limited_warning(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No response within http_timeout: besides the 503, one WARNING naming the request."""
    caplog.set_level(logging.WARNING, logger="interface")

    async def silent(message: Message) -> None:
        pass

    info = await start_server(
        [route("http.request", silent)], interface_config=InterfaceConfig(http_timeout=0.3)
    )
    statuses = [(await get(info.url + f"/slow{index}")).status_code for index in range(2)]
    assert statuses == [503, 503]
    warnings = [record.getMessage() for record in caplog.records if "http_timeout" in record.getMessage()]
    assert len(warnings) == 1 and "'GET /slow0 HTTP/1.1'" in warnings[0], warnings
