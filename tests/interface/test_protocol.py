"""The I/O-free protocol: message shapes and the accept/close/reject table (sync tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interface.protocol import (
    Accept,
    Close,
    HttpResponseProtocol,
    Reject,
    ResponseAbort,
    ResponseBody,
    ResponseStart,
    SendBytes,
    SendText,
    WebSocketProtocol,
    WebSocketState,
    clean_headers,
    decode_path,
)


def ws() -> WebSocketProtocol:
    return WebSocketProtocol(reply_channel="interface.p!c", path="/chat/")


def test_order_numbers() -> None:
    """connect is 0, frames count from 1, disconnect is last + 1."""
    socket = ws()
    assert socket.connect_message()["order"] == 0
    assert socket.receive_message("a") == {
        "reply_channel": "interface.p!c",
        "path": "/chat/",
        "order": 1,
        "text": "a",
    }
    assert socket.receive_message(b"b") == {
        "reply_channel": "interface.p!c",
        "path": "/chat/",
        "order": 2,
        "bytes": b"b",
    }
    assert socket.disconnect_message(4000) == {
        "reply_channel": "interface.p!c",
        "code": 4000,
        "path": "/chat/",
        "order": 3,
    }


def test_messages_hold_plain_builtin_types() -> None:
    """Regression (issue 11.1): an IntEnum close code or a str/bytes subclass becomes the plain type."""
    import enum

    from wsproto.frame_protocol import CloseReason

    class Text(str, enum.Enum):
        HELLO = "hello"

    socket = ws()
    text = socket.receive_message(Text.HELLO)["text"]
    assert type(text) is str and text == "hello"
    data = socket.receive_message(bytearray(b"\x00"))["bytes"]
    assert type(data) is bytes and data == b"\x00"
    code = socket.disconnect_message(CloseReason.GOING_AWAY)["code"]
    assert type(code) is int and code == 1001


def test_empty_frames_are_messages() -> None:
    """Regression (issue 11.8): an empty text or binary frame is a websocket.receive like any other."""
    socket = ws()
    assert socket.receive_message("")["text"] == ""
    assert socket.receive_message(b"")["bytes"] == b""


def test_connect_message_keys() -> None:
    """websocket.connect has every key of reference §3.7 (plus subprotocols)."""
    assert set(ws().connect_message()) == {
        "reply_channel", "scheme", "path", "query_string", "root_path", "headers", "client", "server", "subprotocols", "order",
    }  # fmt: skip


HANDSHAKING: list[tuple[dict[str, Any], list[Any], WebSocketState]] = [
    ({"accept": True}, [Accept()], WebSocketState.OPEN),
    ({"accept": False}, [Reject(403)], WebSocketState.CLOSED),
    ({"accept": False, "text": "x"}, [Reject(403)], WebSocketState.CLOSED),
    ({"text": "x"}, [Accept(), SendText("x")], WebSocketState.OPEN),
    ({"bytes": b"x"}, [Accept(), SendBytes(b"x")], WebSocketState.OPEN),
    ({"close": True}, [Reject(403)], WebSocketState.CLOSED),
    ({"text": "x", "close": 4000}, [Accept(), SendText("x"), Close(4000)], WebSocketState.CLOSED),
    ({"accept": True, "close": True}, [Accept(), Close(1000)], WebSocketState.CLOSED),
    ({"text": ""}, [Accept(), SendText("")], WebSocketState.OPEN),
    ({"bytes": b""}, [Accept(), SendBytes(b"")], WebSocketState.OPEN),
    ({"text": None}, [], WebSocketState.CONNECTING),
    ({}, [], WebSocketState.CONNECTING),
]


@pytest.mark.parametrize(("reply", "actions", "state"), HANDSHAKING)
def test_handshaking_table(reply: dict[str, Any], actions: list[Any], state: WebSocketState) -> None:
    """Each handshaking row of the accept table."""
    socket = ws()
    assert socket.reply(reply) == actions
    assert socket.state is state


@pytest.mark.parametrize(
    ("reply", "actions"),
    [
        ({"text": "x"}, [SendText("x")]),
        ({"bytes": b"x"}, [SendBytes(b"x")]),
        ({"close": 4001}, [Close(4001)]),
        ({"text": "x", "close": True}, [SendText("x"), Close(1000)]),
        ({"accept": False, "text": "x"}, [SendText("x")]),
        ({"text": ""}, [SendText("")]),
        ({"bytes": b""}, [SendBytes(b"")]),
        ({"text": "", "close": 4002}, [SendText(""), Close(4002)]),
    ],
)
def test_open_table(reply: dict[str, Any], actions: list[Any]) -> None:
    """Open-socket rows: frames, close after data, accept ignored."""
    socket = ws()
    socket.reply({"accept": True})
    assert socket.reply(reply) == actions


def test_closed_socket_ignores_replies() -> None:
    """Nothing is done after close."""
    socket = ws()
    socket.reply({"close": True})
    assert socket.reply({"text": "late"}) == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"text": "a", "bytes": b"b"}, "both 'text' and 'bytes'"),
        ({"text": "", "bytes": b""}, "both 'text' and 'bytes'"),
        ({"status": 200}, r"unknown key\(s\) \['status'\]"),
        ({"close": 999}, "close code 999 is invalid"),
        ({"text": b"x"}, "'text' must be str"),
    ],
)
def test_bad_replies(reply: dict[str, Any], error: str) -> None:
    """Malformed replies raise ValueError saying what is wrong; state is unchanged."""
    socket = ws()
    with pytest.raises(ValueError, match=error):
        socket.reply(reply)
    assert socket.state is WebSocketState.CONNECTING


def test_http_response_protocol() -> None:
    """Response then chunks; a second status or a headless first chunk is an error."""
    state = HttpResponseProtocol()
    with pytest.raises(ValueError, match="must have 'status'"):
        state.reply({"content": b"x"})
    assert state.reply(
        {"status": 200, "headers": [[b"Content-Type", b"text/plain"]], "more_content": True}
    ) == [
        ResponseStart(200, [[b"content-type", b"text/plain"]]),
        ResponseBody(b"", True),
    ]
    with pytest.raises(ValueError, match="second Response"):
        state.reply({"status": 200})
    assert state.reply({"content": b"end"}) == [ResponseBody(b"end", False)]
    assert state.finished and state.reply({"content": b"ignored"}) == []


@pytest.mark.parametrize(
    ("message", "error"),
    [({"status": 99}, "status 99 is invalid"), ({"status": 200, "headers": [["a", "b"]]}, "pair of bytes")],
)
def test_bad_responses(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        HttpResponseProtocol().reply(message)


def test_headers_and_paths() -> None:
    """Header names are lowercased, underscored names dropped; paths percent-decoded."""
    assert clean_headers([(b"X-A", b"1"), (b"x_b", b"2"), (b"X-A", b"3")]) == [[b"x-a", b"1"], [b"x-a", b"3"]]
    assert decode_path(b"/caf%C3%A9/a+b") == "/café/a+b"


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (
            [b"x-a", b"one\r\nset-cookie: evil=1"],
            r"header b'x-a' has an invalid value .*must not contain CR, LF",
        ),
        ([b"x-a", b"one\nLF"], "must not contain CR, LF"),
        ([b"x-a", b"nul\x00"], "must not contain CR, LF, NUL"),
        ([b"x-a", b"vertical\x0btab"], "whitespace other than spaces and tabs"),
        ([b"bad name", b"v"], r"name b'bad name' is invalid: it must be a token"),
        ([b"x-a:", b"v"], "must be a token"),
        ([b":status", b"200"], "must be a token"),
        ([b"", b"v"], "must be a token"),
        ([b"content-length", b"12 bytes"], "content-length must be a decimal number"),
    ],
)
def test_response_headers_follow_h11_rules(header: list[bytes], error: str) -> None:
    """Headers h11 would refuse are a ValueError naming the header, before anything is started."""
    state = HttpResponseProtocol()
    with pytest.raises(ValueError, match=error):
        state.reply({"status": 200, "headers": [[b"content-type", b"text/plain"], header]})
    assert not state.started


def test_response_header_values_are_trimmed() -> None:
    """Outer spaces and tabs are not part of a value; inner ones, and obs-text, are kept."""
    (start, _) = HttpResponseProtocol().reply({"status": 200, "headers": [[b"X-A", b" \ta  b\tc \xe9 "]]})
    assert start == ResponseStart(200, [[b"x-a", b"a  b\tc \xe9"]])


def test_closed_abandons_the_response() -> None:
    """A message with closed: True aborts the response, started or not, and ends it."""
    state = HttpResponseProtocol()
    state.reply({"status": 200, "more_content": True})
    assert state.reply({"closed": True}) == [ResponseAbort()]
    assert state.finished and state.reply({"content": b"late"}) == []
    assert HttpResponseProtocol().reply({"closed": True, "status": 200}) == [ResponseAbort()]


def test_the_first_close_decides_the_code() -> None:
    """Our close decides the code unless the client's came first; either way once."""
    ours = ws()
    assert ours.local_close(1013) is True and ours.closing
    assert ours.local_close(1001) is False  # a second close: no second close frame
    ours.remote_close(4000)  # the client's answer does not change what happened
    assert ours.disconnect_message()["code"] == 1013

    theirs = ws()
    theirs.remote_close(4002)
    assert theirs.local_close(1001) is False
    assert theirs.disconnect_message()["code"] == 4002


def test_a_ping_timeout_reports_another_code_than_it_sends() -> None:
    """A ping timeout sends 1011 but tells the application 1006 (no close frame came back)."""
    socket = ws()
    assert socket.local_close(1011, reported=1006) is True
    assert socket.disconnect_message()["code"] == 1006
    assert type(socket.disconnect_message()["code"]) is int


def test_a_refused_frame_gives_its_order_back() -> None:
    """Regression (issue 12): a frame the layer refused leaves no gap in order numbers, so the
    disconnect follows the last frame sent (enforce_ordering would wait for the gap)."""
    socket = ws()
    assert socket.receive_message("sent")["order"] == 1
    assert socket.receive_message("refused")["order"] == 2
    socket.receive_refused()
    assert socket.receive_message("next")["order"] == 2
    socket.local_close(1013)
    assert socket.disconnect_message()["order"] == 3


# ------------------------------------------------------------------ positions and presence events


def _opened() -> WebSocketProtocol:
    socket = ws()
    socket.reply({"accept": True})
    return socket


POSITION = {"__history__": {"group": "chat-lobby", "epoch": "9f2c", "offset": 17}}


def test_a_position_joins_its_demultiplexer_frame() -> None:
    """A group message's history position becomes the frame's "offset" and "epoch" keys."""
    text = json.dumps({"stream": "chat", "payload": {"text": "hi", "n": [1, {"a": "}"}]}})
    actions = _opened().reply({"text": text, **POSITION})
    assert len(actions) == 1 and isinstance(actions[0], SendText)
    assert json.loads(actions[0].text) == {
        "stream": "chat",
        "payload": {"text": "hi", "n": [1, {"a": "}"}]},
        "offset": 17,
        "epoch": "9f2c",
    }


def test_a_position_on_other_frames_is_left_out() -> None:
    """Frames that are not demultiplexer frames are sent as they are, without the position."""
    socket = _opened()
    assert socket.reply({"text": "plain words", **POSITION}) == [SendText("plain words")]
    assert socket.reply({"text": '{"other": 1}', **POSITION}) == [SendText('{"other": 1}')]
    assert socket.reply({"bytes": b"\x00", **POSITION}) == [SendBytes(b"\x00")]
    assert socket.reply({"close": 4000, **POSITION}) == [Close(4000)]


def test_a_presence_event_is_a_json_text_frame() -> None:
    """A presence event reaching a WebSocket becomes a text frame holding it as JSON."""
    event = {"presence": "join", "group": "chat-lobby", "channel": "interface.p!c2", "info": {"name": "Ann"}}
    actions = _opened().reply(dict(event))
    assert len(actions) == 1 and isinstance(actions[0], SendText)
    assert json.loads(actions[0].text) == event
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['presence'\]"):
        _opened().reply({"text": "x", "presence": "join"})  # not an event: still an error
