"""The server side of the browser client (issue 16): its files at /_trio_channels/, ahead of
the application's routes, and the request/reply helpers it maps to."""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

import pytest

from layers import InMemoryChannelLayer
from trio_channels import Message, Router, include, route
from trio_channels.generic import (
    REQUEST_KEY,
    JsonWebsocketConsumer,
    WebsocketDemultiplexer,
    reply_to,
    request_id,
)
from trio_channels.http import CLIENT_PREFIX, MODULE_EXPORTS, Response, client_route, send_response
from trio_channels.testing import HttpClient, WebsocketClient

SOURCE = resources.files("trio_channels").joinpath("static", "trio-channels.js").read_bytes()
TYPINGS = resources.files("trio_channels").joinpath("static", "trio-channels.d.ts").read_bytes()


async def catch_all(message: Message) -> None:
    await send_response(message, Response(f"mine: {message['path']}", content_type="text/plain"))


async def test_the_client_files_are_served_with_their_types() -> None:
    http = HttpClient([])
    script = await http.get("/_trio_channels/client.js")
    assert script.status == 200 and script.body == SOURCE
    assert script.header("content-type") == "text/javascript; charset=utf-8"
    assert script.header("access-control-allow-origin") == "*"
    assert script.header("cache-control") == "no-cache"
    module = await http.get("/_trio_channels/client.mjs")
    assert module.body == SOURCE + MODULE_EXPORTS.encode()
    assert module.header("content-type") == "text/javascript; charset=utf-8"
    typings = await http.get("/_trio_channels/client.d.ts")
    assert (
        typings.body == TYPINGS and typings.header("content-type") == "application/typescript; charset=utf-8"
    )
    head = await http.request("HEAD", "/_trio_channels/client.js")
    assert head.body == b"" and head.header("content-length") == str(len(SOURCE))


async def test_an_unchanged_file_is_not_sent_again() -> None:
    http = HttpClient([])
    first = await http.get("/_trio_channels/client.mjs")
    etag = first.header("etag")
    assert etag is not None and etag.startswith('"')
    again = await http.get("/_trio_channels/client.mjs", headers=[("if-none-match", f'W/"x", {etag}')])
    assert again.status == 304 and again.body == b"" and again.header("etag") == etag
    other = await http.get("/_trio_channels/client.js", headers=[("if-none-match", etag)])
    assert other.status == 200 and other.body == SOURCE  # each file has its own tag


async def test_a_catch_all_route_does_not_shadow_the_client() -> None:
    """The client's route comes first, whatever the application routes (issue 16)."""
    http = HttpClient([route("http.request", catch_all)])
    assert (await http.get("/_trio_channels/client.js")).body == SOURCE
    assert (await http.get("/elsewhere")).text == "mine: /elsewhere"
    # Only the client's files, and only GET/HEAD, are taken: the rest of the prefix is the app's.
    assert (await http.get("/_trio_channels/other.js")).text == "mine: /_trio_channels/other.js"
    assert (await http.post("/_trio_channels/client.js")).text == "mine: /_trio_channels/client.js"


async def test_placing_the_client_route_lets_earlier_routes_take_its_urls() -> None:
    mine = route("http.request", catch_all, path=r"^/_trio_channels/client\.js$")
    http = HttpClient([mine, client_route()])
    assert (await http.get("/_trio_channels/client.js")).text == "mine: /_trio_channels/client.js"
    assert (await http.get("/_trio_channels/client.mjs")).body.startswith(SOURCE)
    nested = HttpClient([include([mine, client_route()])])  # found inside an include too
    assert (await nested.get("/_trio_channels/client.js")).text == "mine: /_trio_channels/client.js"
    after = HttpClient([client_route(), mine])
    assert (await after.get("/_trio_channels/client.js")).body == SOURCE


def test_a_router_without_defaults_adds_no_client_route() -> None:
    router = Router([route("websocket.connect", catch_all)], defaults=False)
    assert router.channels() == {"websocket.connect"}
    assert CLIENT_PREFIX == "/_trio_channels/"


def test_the_module_exports_name_the_members_the_script_returns() -> None:
    """client.mjs's export line and the object trio-channels.js builds list the same names
    (the browser suite checks the loaded module too)."""
    returned = SOURCE.decode().rsplit("return Object.freeze({", 1)[1].split("});", 1)[0]
    members = sorted(name.strip() for name in returned.split(",") if name.strip())
    exported = MODULE_EXPORTS.split("export const {", 1)[1].split("}", 1)[0]
    assert sorted(name.strip() for name in exported.split(",")) == members


# ----------------------------------------------------------------------------- request/reply


async def answer(message: Message) -> None:
    frame = json.loads(message["text"])
    payload = frame["payload"]
    if payload.get("fail"):
        await reply_to(message, frame, error=payload["fail"])
    elif not await reply_to(message, frame, {"doubled": payload.get("n", 0) * 2}):
        await message.reply_channel.send({"text": "not a request"})


ANSWER = [route("websocket.receive", answer, path=r"^/rpc/$")]


async def test_reply_to_answers_a_request_on_its_stream() -> None:
    ws = WebsocketClient(ANSWER)
    await ws.connect("/rpc/")
    await ws.send_json({"stream": "math", "payload": {"n": 21, REQUEST_KEY: 7}})
    assert await ws.receive_json() == {"stream": "math", "reply": 7, "payload": {"doubled": 42}}
    await ws.send_json({"stream": "math", "payload": {"n": 1, REQUEST_KEY: "abc"}})
    assert (await ws.receive_json())["reply"] == "abc"


async def test_reply_to_an_error_and_to_what_is_not_a_request() -> None:
    ws = WebsocketClient(ANSWER)
    await ws.connect("/rpc/")
    await ws.send_json({"stream": "math", "payload": {"fail": "no such thing", REQUEST_KEY: 1}})
    assert await ws.receive_json() == {"stream": "math", "reply": 1, "error": {"message": "no such thing"}}
    await ws.send_json({"stream": "math", "payload": {"n": 1}})  # sent with send(), not request()
    assert await ws.receive_text() == "not a request"


async def test_a_bad_request_id_is_logged_and_answered_with_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ws = WebsocketClient(ANSWER)
    await ws.connect("/rpc/")
    with caplog.at_level(logging.WARNING, "trio_channels.generic"):
        await ws.send_json({"stream": "math", "payload": {"n": 1, REQUEST_KEY: {"no": 1}}})
    assert await ws.receive_text() == "not a request"
    assert "ignored a request id that is not an int or a str on /rpc/: {'no': 1}" in caplog.text


@pytest.mark.parametrize(
    ("payload", "expected"),
    [({REQUEST_KEY: 3}, 3), ({REQUEST_KEY: "x"}, "x"), ({}, None), ({REQUEST_KEY: True}, None), ("x", None)],
)
def test_request_id(payload: Any, expected: Any) -> None:
    assert request_id(payload) == expected


class Maths(JsonWebsocketConsumer):
    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        assert self.multiplexer is not None
        if not await self.multiplexer.reply(content, {"doubled": content["n"] * 2}):
            await self.send({"said": content["n"]})


class Streams(WebsocketDemultiplexer):
    consumers = {"math": Maths}


async def test_a_stream_consumer_replies_through_its_multiplexer() -> None:
    ws = WebsocketClient([Streams.as_route(path=r"^/multi/$")], InMemoryChannelLayer())
    await ws.connect("/multi/")
    await ws.send_json({"stream": "math", "payload": {"n": 4, REQUEST_KEY: 9}})
    assert await ws.receive_json() == {"stream": "math", "reply": 9, "payload": {"doubled": 8}}
    await ws.send_json({"stream": "math", "payload": {"n": 5}})
    assert await ws.receive_json() == {"stream": "math", "payload": {"said": 5}}
