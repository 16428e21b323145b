"""HTTP helpers: Response encoding, Request parsing, the ASGI-3 and static fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from layers import InMemoryChannelLayer
from trio_channels import Channel, Message
from trio_channels.exceptions import RequestAborted
from trio_channels.http import (
    CHUNK_SIZE,
    Request,
    Response,
    asgi_consumer,
    file_consumer,
    static_files_consumer,
)

from ..helpers import receive_now


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    async with InMemoryChannelLayer() as opened:
        yield opened


def request_message(layer: InMemoryChannelLayer, **content: Any) -> Message:
    base = {
        "reply_channel": "interface.t!r",
        "method": "GET",
        "path": "/",
        "query_string": b"",
        "headers": [],
        "body": b"",
        "scheme": "http",
        "http_version": "1.1",
    }
    return Message({**base, **content}, Channel("http.request", layer=layer), layer)


async def replies(layer: InMemoryChannelLayer) -> list[dict[str, Any]]:
    messages = []
    while True:
        _, message = await receive_now(layer, ["interface.t!"])
        messages.append(message)
        if not message.get("more_content"):
            return messages


def test_response_encode_is_the_seed_encode_response() -> None:
    """One message for a small body; 512 KiB chunks with more_content for a large one."""
    (only,) = Response("Hello world! You asked for /x").encode()
    assert only["status"] == 200 and only["content"] == b"Hello world! You asked for /x"
    assert only["more_content"] is False
    assert [b"Content-Type", b"text/html; charset=utf-8"] in only["headers"]
    big = Response(b"x" * (CHUNK_SIZE * 2 + 1)).encode()
    assert [len(part["content"]) for part in big] == [CHUNK_SIZE, CHUNK_SIZE, 1]
    assert [part["more_content"] for part in big] == [True, True, False]
    assert "status" in big[0] and "status" not in big[1]
    assert Response(b"").encode()[0]["content"] == b""


def test_set_cookie_adds_one_header_per_cookie() -> None:
    """Set-Cookie headers are separate, with the attributes asked for."""
    response = Response("x")
    response.set_cookie("sessionid", "abc", max_age=60)
    response.set_cookie("other", "v w", httponly=False, samesite=None)
    cookies = [value for name, value in response.headers if name == "Set-Cookie"]
    assert (
        cookies[0].startswith("sessionid=abc; ") and "HttpOnly" in cookies[0] and "Max-Age=60" in cookies[0]
    )
    assert cookies[1].startswith('other="v w"') and "HttpOnly" not in cookies[1]


def test_bad_status() -> None:
    with pytest.raises(ValueError, match="status 99 is invalid"):
        Response("x", status=99)


async def test_request_from_message(layer: InMemoryChannelLayer) -> None:
    """Request reads method, query, case-insensitive headers, cookies and JSON."""
    message = request_message(
        layer,
        method="POST",
        query_string=b"a=1&a=2&b=",
        headers=[[b"content-type", b"application/json"], [b"cookie", b"sessionid=xyz; theme=dark"]],
        body=b'{"k": [1, 2]}',
    )
    request = await Request.from_message(message)
    assert request.method == "POST" and request.GET == {"a": ["1", "2"], "b": [""]}
    assert request.query("a") == "1" and request.query("zzz", "d") == "d"
    assert request.headers["Content-Type"] == "application/json" and "COOKIE" in request.headers
    assert request.cookies == {"sessionid": "xyz", "theme": "dark"}
    assert request.json() == {"k": [1, 2]}


async def test_request_reads_the_body_channel(layer: InMemoryChannelLayer) -> None:
    """A chunked body is reassembled from body_channel."""
    body_channel = await layer.new_channel("http.request.body?")
    await layer.send(body_channel, {"content": b"two", "more_content": True})
    await layer.send(body_channel, {"content": b"three", "more_content": False})
    request = await Request.from_message(request_message(layer, body=b"one", body_channel=body_channel))
    assert request.body == b"onetwothree"


async def test_asgi_fallback_runs_an_asgi3_app(layer: InMemoryChannelLayer) -> None:
    """An ASGI-3 app answers http.request messages through the reply channel."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-app", b"yes")]})
        await send({"type": "http.response.body", "body": b"got " + body, "more_body": True})
        await send({"type": "http.response.body", "body": b"!"})

    consumer = asgi_consumer(app)
    await consumer(request_message(layer, method="PUT", path="/api/x", query_string=b"q=1", body=b"data"))
    first, second = await replies(layer)
    assert (
        first["status"] == 201 and [b"x-app", b"yes"] in first["headers"] and first["content"] == b"got data"
    )
    assert second == {"content": b"!", "more_content": False}
    assert seen[0]["method"] == "PUT" and seen[0]["path"] == "/api/x" and seen[0]["query_string"] == b"q=1"


def test_asgi_fallback_bad_path() -> None:
    """A bad --http-app path is an ImportError naming it."""
    with pytest.raises(ImportError, match=r"'nowhere\.module:app'"):
        asgi_consumer("nowhere.module:app")
    with pytest.raises(
        ImportError, match=r"'no_colon' is not an import path like 'myapp\.consumers:ws_message'"
    ):
        asgi_consumer("no_colon")
    with pytest.raises(ImportError, match=r"'tests\.core:a:b' must be written 'package\.module:name'"):
        asgi_consumer("tests.core:a:b")


async def test_static_files(layer: InMemoryChannelLayer, tmp_path: Path) -> None:
    """Files under the root are served with a content type; escapes and misses get 404."""
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path.parent / "secret.txt").write_text("no")
    consumer = static_files_consumer(tmp_path, "/static/")
    await consumer(request_message(layer, path="/static/app.js"))
    (found,) = await replies(layer)
    assert found["status"] == 200 and found["content"] == b"console.log(1)"
    assert any(name == b"Content-Type" and b"javascript" in value for name, value in found["headers"])
    for path in ("/static/../secret.txt", "/static/missing.js", "/elsewhere"):
        await consumer(request_message(layer, path=path))
        (missing,) = await replies(layer)
        assert missing["status"] == 404
    with pytest.raises(ValueError, match="is not a directory"):
        static_files_consumer(tmp_path / "nope")


async def test_file_consumer_serves_one_file_read_on_each_request(
    layer: InMemoryChannelLayer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """file_consumer("page.html"): relative to the current directory, read on every request (an
    edit shows), typed from its name, no-cache; HEAD gets headers only, POST a 405."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "index.html").write_text("<p>one</p>")
    consumer = file_consumer("pages/index.html")
    monkeypatch.chdir(tmp_path.parent)  # resolved when made: a later chdir changes nothing
    await consumer(request_message(layer))
    (first,) = await replies(layer)
    headers = {bytes(name).lower(): bytes(value) for name, value in first["headers"]}
    assert (first["status"], first["content"]) == (200, b"<p>one</p>")
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    (tmp_path / "pages" / "index.html").write_text("<p>two, edited</p>")
    await consumer(request_message(layer, method="HEAD"))
    (head,) = await replies(layer)
    head_headers = {bytes(name).lower(): bytes(value) for name, value in head["headers"]}
    assert (head["status"], head["content"], head_headers[b"content-length"]) == (200, b"", b"18")
    await consumer(request_message(layer))
    assert (await replies(layer))[0]["content"] == b"<p>two, edited</p>"
    await consumer(request_message(layer, method="POST"))
    (refused,) = await replies(layer)
    assert refused["status"] == 405 and [b"Allow", b"GET, HEAD"] in refused["headers"]
    assert file_consumer(tmp_path / "pages" / "index.html", content_type="text/plain")
    with pytest.raises(FileNotFoundError, match=r"file 'nope\.html' not found: .* current directory"):
        file_consumer("nope.html")


async def test_static_paths_that_name_no_file_are_404(layer: InMemoryChannelLayer, tmp_path: Path) -> None:
    """NUL bytes, undecodable bytes (as the path decoder's surrogates), long names: 404, no error."""
    (tmp_path / "a.txt").write_text("a")
    consumer = static_files_consumer(tmp_path, "/static/")
    for path in ("/static/a.txt\x00.png", "/static/caf\udce9.txt", "/static/" + "n" * 300, "/x\udcff"):
        await consumer(request_message(layer, path=path))
        (missing,) = await replies(layer)
        assert missing["status"] == 404, path
    assert missing["content"] == b"404 Not Found: /x\\udcff\n"


async def test_request_raises_request_aborted_on_a_closed_chunk(layer: InMemoryChannelLayer) -> None:
    """A chunk with closed: True (the client left, or the body was too large) aborts the request."""
    body_channel = await layer.new_channel("http.request.body?")
    await layer.send(body_channel, {"content": b"two", "more_content": True})
    await layer.send(body_channel, {"content": b"", "more_content": False, "closed": True})
    with pytest.raises(RequestAborted, match="abandoned"):
        await Request.from_message(request_message(layer, body=b"one", body_channel=body_channel))
