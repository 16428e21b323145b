"""Bearer tokens in process: where a token is found, the JWT verifier's checks and options, and
the token decorators' answers for refused tokens (the real-socket tests are in tests/e2e)."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest

from trio_channels import Channel, Message, route
from trio_channels.auth import ANONYMOUS, channel_session_user_from_token, token_user
from trio_channels.http import Response, send_response
from trio_channels.testing import HttpClient, WebsocketClient
from trio_channels.tokens import InvalidToken, JWTVerifier, TokenUser, bearer_subprotocol, bearer_token

SECRET = b"a test secret of at least 32 bytes, for HS256"


def token(**changes: Any) -> str:
    now = int(time.time())
    claims = {"sub": "alice", "aud": "chat", "iss": "https://issuer.test", "exp": now + 300, **changes}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


def verifier(**options: Any) -> JWTVerifier:
    return JWTVerifier(key=SECRET, algorithms=["HS256"], **options)


def connect_message(**content: Any) -> Message:
    from layers import InMemoryChannelLayer

    return Message(
        {"reply_channel": "interface.t!c1", **content}, Channel("websocket.connect"), InMemoryChannelLayer()
    )


def test_where_a_token_is_found() -> None:
    """Header first (any case of 'Bearer'), then the subprotocol, then ?token=; else None."""
    header = [[b"Authorization", b"bearer  abc.def "]]
    sub = [bearer_subprotocol("from-sub"), "chat"]
    assert bearer_token(connect_message(headers=header, subprotocols=sub)) == ("header", "abc.def")
    assert bearer_token(connect_message(subprotocols=sub, query_string=b"token=q")) == (
        "subprotocol",
        "from-sub",
    )
    assert bearer_token(connect_message(query_string=b"a=1&token=q")) == ("query", "q")
    assert bearer_token(connect_message(headers=[[b"authorization", b"Basic eDp5"]])) is None
    assert bearer_token(connect_message(query_string=b"token=q"), sources=("header",)) is None
    assert bearer_token(connect_message(query_string=b"t=q"), query_param="t") == ("query", "q")
    with pytest.raises(InvalidToken, match="does not hold base64url"):
        bearer_token(connect_message(subprotocols=["base64url.bearer.authorization.k8s.io.!!"]))


async def test_jwt_checks_and_their_reasons() -> None:
    """Each refused JWT says why; leeway, audience lists and custom users work."""
    check = verifier(audience="chat", issuer="https://issuer.test")
    user = await check(token())
    assert user == TokenUser("alice", user.claims) and user.username == "alice"
    now = int(time.time())
    refused = {
        "ExpiredSignatureError": token(exp=now - 30),
        "ImmatureSignatureError": token(nbf=now + 600),
        "InvalidAudienceError": token(aud="other"),
        "InvalidIssuerError": token(iss="https://evil.test"),
        "MissingRequiredClaimError": token(exp=None),
        "DecodeError": "garbage",
    }
    for reason, bad in refused.items():
        with pytest.raises(InvalidToken, match=reason):
            await check(bad)
    lenient = verifier(audience=["other", "chat"], issuer="https://issuer.test", leeway=60)
    assert (await lenient(token(exp=now - 30))).id == "alice"

    async def to_dict(claims: dict[str, Any]) -> dict[str, Any]:
        return {"id": claims["sub"], "name": claims["name"]}

    custom = verifier(audience="chat", require=["exp"], user=to_dict)
    assert await custom(token(name="Alice")) == {"id": "alice", "name": "Alice"}
    assert TokenUser("u1", {"preferred_username": "al"}).username == "al"


def test_jwt_verifier_options_are_validated() -> None:
    """alg none, mixed HMAC/public-key algorithms, no algorithm and a bad leeway fail at construction."""
    with pytest.raises(ValueError, match=r"\['none'\] are not accepted"):
        JWTVerifier(key=SECRET, algorithms=["none"])
    with pytest.raises(ValueError, match="mix HMAC and public-key"):
        JWTVerifier(key=SECRET, algorithms=["HS256", "RS256"])
    with pytest.raises(ValueError, match="at least one algorithm"):
        JWTVerifier(key=SECRET, algorithms=[])
    with pytest.raises(ValueError, match="leeway must be"):
        JWTVerifier(key=SECRET, algorithms=["HS256"], leeway=-1)
    with pytest.raises(ValueError, match="on_failure must be"):
        token_user(verifier(), on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sources"):
        token_user(verifier(), sources=["cookie"])  # type: ignore[list-item]


async def test_a_failing_verifier_denies_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """A verifier that raises something else, or returns None, refuses too: never a traceback."""

    async def broken(token: str) -> Any:
        raise RuntimeError("the user database is down")

    async def nobody(token: str) -> Any:
        return None

    async def connect(message: Message) -> None:
        await message.reply_channel.send({"accept": True})

    for verify, reason in (
        (broken, "the verifier failed: RuntimeError: the user database is down"),
        (nobody, "returned None"),
    ):
        caplog.clear()
        ws = WebsocketClient([route("websocket.connect", channel_session_user_from_token(verify)(connect))])
        reply = await ws.connect("/", headers=[("authorization", "Bearer t0k3n")], check_accept=False)
        assert reply == {"accept": True, "close": 4401}
        (record,) = [r for r in caplog.records if r.name == "trio_channels.auth"]
        assert record.levelno == logging.WARNING and reason in record.getMessage() and record.exc_info is None
        assert "t0k3n" not in caplog.text


async def test_optional_tokens_and_other_channels() -> None:
    """required=False: no token gives ANONYMOUS (a bad one is still refused); an open WebSocket
    is closed with 4401 on a later message."""
    seen: list[Any] = []

    @token_user(verifier(audience="chat"), required=False)
    async def page(message: Message) -> None:
        seen.append(message.user)
        await send_response(message, Response("ok"))

    http = HttpClient([route("http.request", page)])
    assert (await http.get("/")).status == 200
    assert (await http.get("/?token=" + token())).status == 200
    assert (await http.get("/?token=bad")).status == 401
    assert seen == [ANONYMOUS, TokenUser("alice", seen[1].claims)]

    async def receive(message: Message) -> None:
        seen.append("ran")

    ws = WebsocketClient([route("websocket.receive", token_user(verifier())(receive))])
    await ws.connect("/")
    await ws.send_text("no token here")
    assert await ws.receive() == {"close": 4401}
    assert seen[-1] != "ran"
