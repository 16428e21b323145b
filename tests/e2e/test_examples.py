"""Every tutorial example, end to end over real sockets (the browser tests add the JavaScript)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from examples.authentication.users import load_user
from trio_channels.testing import open_websocket
from trio_channels.tokens import bearer_subprotocol

from .conftest import StartServer
from .processes import ENV, ROOT, started

pytestmark = pytest.mark.usefixtures("in_examples")


async def _expect(ws: object, *texts: str) -> None:
    with trio.fail_after(5):
        for text in texts:
            assert await ws.get_message() == text  # type: ignore[attr-defined]


async def _silent(ws: object, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        heard = await ws.get_message()  # type: ignore[attr-defined]
        pytest.fail(f"expected silence, heard {heard!r}")


async def test_first_consumers(start_server: StartServer) -> None:
    """Step 1: every HTTP request gets the seed's hello."""
    info = await start_server("examples.first_consumers.routing.channel_routing")
    async with httpx.AsyncClient() as client:
        response = await client.get(info.url + "/any/path/")
    assert response.status_code == 200
    assert response.text == "Hello world! You asked for /any/path/"


async def test_echo(start_server: StartServer) -> None:
    """Step 2: any WebSocket path echoes; the page carries the seed's snippet."""
    info = await start_server("examples.echo.routing.channel_routing")
    async with httpx.AsyncClient() as client:
        page = (await client.get(info.url + "/")).text
    assert 'socket.send("hello world");' in page
    async with open_websocket(info.url, "/chat/") as ws:
        await ws.send_message("hello world")
        await _expect(ws, "hello world")


async def test_chat_group(start_server: StartServer) -> None:
    """Step 3: everyone connected is in the chat group and hears everyone."""
    info = await start_server("examples.chat.routing.channel_routing")
    async with (
        open_websocket(info.url, "/chat/") as one,
        open_websocket(info.url, "/x/") as two,
    ):
        await one.send_message("hello world")
        await _expect(one, "[user] hello world")
        await _expect(two, "[user] hello world")


async def test_rooms(start_server: StartServer) -> None:
    """Step 5: the room from the path, kept in the channel session."""
    info = await start_server("examples.rooms.routing.channel_routing")
    async with (
        open_websocket(info.url, "/abc/") as one,
        open_websocket(info.url, "/abc/") as two,
        open_websocket(info.url, "/xyz/") as other,
    ):
        await one.send_message("in abc")
        await _expect(two, "in abc")
        await _silent(other)


async def _log_in(client: httpx.AsyncClient, url: str, name: str) -> str:
    response = await client.post(url + "/login", data={"username": name})
    assert response.status_code == 200, response.text
    return response.text.split('<code id="session-key">')[1].split("</code>")[0]


async def test_authentication_and_security(start_server: StartServer) -> None:
    """Steps 6-7: log in over HTTP, chat by first letter, ?session_key= elsewhere, origins checked."""
    info = await start_server(
        "examples.authentication.routing.channel_routing",
        user_loader=load_user,
        allowed_hosts=["localhost", "127.0.0.1"],
        ws_bind=["127.0.0.1:0"],
    )
    origin = [(b"origin", info.url.encode())]
    async with httpx.AsyncClient() as alice, httpx.AsyncClient() as anna, httpx.AsyncClient() as bob:
        for client, name in ((alice, "alice"), (anna, "anna"), (bob, "bob")):
            await _log_in(client, info.url, name)

        def headers(client: httpx.AsyncClient) -> list[tuple[bytes, bytes]]:
            return [*origin, (b"cookie", f"sessionid={client.cookies['sessionid']}".encode())]

        async with (
            open_websocket(info.url, "/chat/", headers=headers(alice)) as a1,
            open_websocket(info.url, "/chat/", headers=headers(anna)) as a2,
            open_websocket(info.url, "/chat/", headers=headers(bob)) as b1,
        ):
            await a1.send_message("hi")
            await _expect(a2, "alice: hi")
            await _silent(b1)
        # A WebSocket server on another address: the session key travels in the URL.
        key = await _log_in(alice, info.url, "alice")
        async with open_websocket(info.ws_urls[0], f"/chat/?session_key={key}", headers=origin) as ws:
            await ws.send_message("elsewhere")
            await _expect(ws, "alice: elsewhere")
        # No origin, a foreign origin, or no login: rejected.
        for extra in ([], [(b"origin", b"http://evil.example")]):
            with pytest.raises(ConnectionRejected):
                async with open_websocket(info.url, "/chat/", headers=[*extra, headers(alice)[1]]):
                    pass
        with pytest.raises(ConnectionRejected):
            async with open_websocket(info.url, "/chat/", headers=origin):
                pass
        bad = await alice.post(info.url + "/login", data={"username": "not valid!"})
        assert bad.status_code == 400


async def test_routing_include(start_server: StartServer) -> None:
    """Step 8: include() chops '/chat', the room comes from a named group; POST /poll/ only."""
    info = await start_server("examples.routing_include.routing.routing")
    async with open_websocket(info.url, "/chat/lobby/") as ws:
        await ws.send_message("hi")
        await _expect(ws, "lobby: hi")
    async with httpx.AsyncClient() as client:
        assert (await client.post(info.url + "/poll/")).text == "polled POST\n"
        assert (await client.get(info.url + "/poll/")).status_code == 404


async def test_models(start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 9: messages go through the chat-messages channel, are saved in SQLite, then broadcast;
    an HTTP POST to /announce/<room>/ reaches the room the same way."""
    from examples.models import models

    monkeypatch.setattr(models, "DATABASE", str(tmp_path / "chat.sqlite3"))
    info = await start_server("examples.models.routing.channel_routing")
    async with (
        open_websocket(info.url, "/lobby/") as one,
        open_websocket(info.url, "/lobby/") as two,
    ):
        await one.send_message("saved and sent")
        await _expect(two, "saved and sent")
        async with httpx.AsyncClient() as client:
            announced = await client.post(info.url + "/announce/lobby/", content=b"tea is ready")
        assert announced.status_code == 202
        await _expect(one, "saved and sent", "[announcement] tea is ready")
    assert models.messages_in("lobby") == ["saved and sent", "[announcement] tea is ready"]


async def test_ordering(start_server: StartServer) -> None:
    """Step 10: with enforce_ordering the count follows the order the client sent in."""
    info = await start_server("examples.ordering.routing.channel_routing")
    async with open_websocket(info.url, "/chat/") as ws:
        for text in ("a", "b", "c", "d"):
            await ws.send_message(text)
        await _expect(ws, "1: a", "2: b", "3: c", "4: d")


async def test_custom_origin_validator(start_server: StartServer) -> None:
    """Step 7: a BaseOriginValidator subclass decides with validate_origin(message, origin)."""
    info = await start_server("examples.authentication.origins:channel_routing")
    async with open_websocket(info.url, "/", headers=[(b"origin", b"https://app.example")]) as ws:
        assert ws.closed is None
    with pytest.raises(ConnectionRejected):
        async with open_websocket(info.url, "/", headers=[(b"origin", b"http://app.example")]):
            pass


async def test_token_auth() -> None:
    """examples/token_auth.py as its docstring runs it: ``python -m examples.token_auth`` serves,
    ``... token alice`` mints a token; the subprotocol form (beside "chat", which is accepted),
    the query form and the header form from httpx; a bad token closes with 4401 and gets 401."""
    minted = await trio.run_process(
        [sys.executable, "-m", "examples.token_auth", "token", "alice"],
        capture_stdout=True,
        env=ENV,
        cwd=ROOT,
    )
    token = minted.stdout.decode().strip()
    command = [sys.executable, "-m", "examples.token_auth", "127.0.0.1:0"]
    async with started(command, " at ") as (_, url):
        url = url.rstrip("/")
        with trio.fail_after(30):
            async with (
                open_websocket(url, "/chat/", subprotocols=["chat", bearer_subprotocol(token)]) as alice,
                open_websocket(url, "/chat/?token=" + token) as again,
            ):
                assert (alice.subprotocol, again.subprotocol) == ("chat", None)
                await alice.send_message("hello")
                await _expect(alice, "alice: hello")
                await _expect(again, "alice: hello")
            async with open_websocket(url, "/chat/?token=" + token[:-2]) as forged:
                with pytest.raises(ConnectionClosed) as closed:
                    await forged.get_message()
                assert closed.value.reason.code == 4401
            async with httpx.AsyncClient() as client:
                me = await client.get(url + "/me", headers={"authorization": f"Bearer {token}"})
                refused = await client.get(url + "/me")
    assert me.status_code == 200 and me.json()["user"] == "alice"
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")


async def _frames(ws: object, count: int) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        return [json.loads(await ws.get_message()) for _ in range(count)]  # type: ignore[attr-defined]


async def _presence(ws: object, *expected: tuple[str, str]) -> None:
    """The next frames of *ws* are these presence events, (event, name) each."""
    frames = await _frames(ws, len(expected))
    assert [(frame["presence"], frame["info"]["name"]) for frame in frames] == list(expected)


async def test_presence_and_catching_up() -> None:
    """Tutorial, "who is here, and catching up", run with its settings (history= and presence=
    in CHANNEL_LAYERS["CONFIG"]): who is here, join/leave events, offsets on every message, the
    last messages for a newcomer, exactly what was missed for a reconnecting client, and a
    clear "not recovered" for a position the server cannot serve."""
    command = [sys.executable, "-m", "trio_channels", "run", "--settings", "presence.settings"]
    async with started([*command, "--bind", "127.0.0.1:0"], " at ", cwd=ROOT / "examples") as (_, url):
        url = url.rstrip("/")
        async with httpx.AsyncClient() as client:
            assert "?recover=chat:" in (await client.get(url + "/")).text
        async with open_websocket(url, "/lobby/alice/") as alice:
            joined, who = await _frames(alice, 2)
            epoch = joined["join"]["epoch"]
            assert joined == {
                "stream": "chat",
                "join": {
                    "group": "room-lobby",
                    "epoch": epoch,
                    "offset": 0,
                    "recovered": True,
                    "replayed": 0,
                },
            }
            assert list(who["payload"].values()) == ["alice"]
            async with open_websocket(url, "/lobby/bob/") as bob:
                [event] = await _frames(alice, 1)
                assert (event["presence"], event["info"]) == ("join", {"name": "bob"})
                _, who = await _frames(bob, 2)
                assert sorted(who["payload"].values()) == ["alice", "bob"]
                await bob.send_message("hi")
                for ws in (alice, bob):
                    [said] = await _frames(ws, 1)
                    assert said["payload"]["text"] == "hi" and (said["offset"], said["epoch"]) == (1, epoch)
                await alice.aclose()
                [event] = await _frames(bob, 1)
                assert (event["presence"], event["info"]) == ("leave", {"name": "alice"})
                await bob.send_message("while you were away")
                await _frames(bob, 1)
                async with open_websocket(url, f"/lobby/alice/?recover=chat:{epoch}:1") as back:
                    missed, joined, _ = await _frames(back, 3)
                    assert (missed["payload"]["text"], missed["offset"]) == ("while you were away", 2)
                    assert joined["join"] == {
                        "group": "room-lobby",
                        "epoch": epoch,
                        "offset": 2,
                        "recovered": True,
                        "replayed": 1,
                    }
                # Bob sees alice come and go: her leave has reached every member before carol
                # joins (else carol could get it between her replayed frames and her join).
                await _presence(bob, ("join", "alice"), ("leave", "alice"))
                async with open_websocket(url, "/lobby/carol/") as carol:
                    first, second, joined, _ = await _frames(carol, 4)
                    assert [first["offset"], second["offset"], joined["join"]["replayed"]] == [1, 2, 2]
                await _presence(bob, ("join", "carol"), ("leave", "carol"))
                async with open_websocket(url, "/lobby/dave/?recover=chat:gone:5") as dave:
                    joined, _ = await _frames(dave, 2)
                    assert joined["join"]["recovered"] is False and joined["join"]["reason"] == "epoch"
