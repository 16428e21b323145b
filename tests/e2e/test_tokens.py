"""Bearer-token authentication over real sockets: real signed JWTs in the Authorization header,
a subprotocol and the query string, against a real server, with trio-websocket and httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from interface import InterfaceConfig
from trio_channels import Message, route
from trio_channels.auth import channel_session_user, channel_session_user_from_token, token_user
from trio_channels.http import Response, send_response
from trio_channels.tokens import JWTVerifier, TokenUser, bearer_subprotocol

from .conftest import StartServer, ws_url

SECRET = b"a test secret of at least 32 bytes, for HS256"
OTHER_SECRET = b"another secret of at least 32 bytes, not ours"
ISSUER = "https://issuer.test"
AUDIENCE = "chat"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class Keys:
    private: rsa.RSAPrivateKey
    public_pem: bytes
    other_private: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Keys(private, public_pem, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300, **changes}
    return {name: value for name, value in payload.items() if value is not None}


def hs256(**changes: Any) -> str:
    return jwt.encode(claims(**changes), SECRET, algorithm="HS256")


def unsigned(**changes: Any) -> str:
    """An ``alg: none`` token: a header, the claims, and an empty signature."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims(**changes)).encode())}."


def hs256_signed_with(secret: bytes, **changes: Any) -> str:
    """An HS256 token made by hand (PyJWT refuses a PEM public key as an HMAC secret)."""
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims(**changes)).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


#: Each case: how to make the token (None: send none) and the reason the log must give.
CASES: dict[str, tuple[Callable[[], str] | None, str | None]] = {
    "valid": (hs256, None),
    "expired": (lambda: hs256(exp=int(time.time()) - 60), "ExpiredSignatureError"),
    "wrong key": (lambda: jwt.encode(claims(), OTHER_SECRET, algorithm="HS256"), "InvalidSignatureError"),
    "wrong audience": (lambda: hs256(aud="another-service"), "InvalidAudienceError"),
    "wrong issuer": (lambda: hs256(iss="https://evil.test"), "InvalidIssuerError"),
    "alg none": (unsigned, "InvalidAlgorithmError"),
    "malformed": (lambda: "not-a.jwt", "DecodeError"),
    "missing": (None, "no bearer token"),
}
WS_PARAMS = [
    (form, case) for form in ("header", "subprotocol", "query") for case in CASES if case != "missing"
]
WS_PARAMS.append(("none", "missing"))
HTTP_PARAMS = [(form, case) for form in ("header", "query") for case in CASES if case != "missing"]
HTTP_PARAMS.append(("none", "missing"))


async def load_user(user_id: Any) -> TokenUser:
    return TokenUser(user_id)


def routing(keys: Keys) -> list[Any]:
    hs = JWTVerifier(key=SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    rs = JWTVerifier(key=keys.public_pem, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)

    async def greet(message: Message) -> None:
        await message.reply_channel.send({"accept": True, "text": f"hello {message.user.username}"})

    @channel_session_user
    async def echo(message: Message) -> None:
        await message.reply_channel.send({"text": f"{message.user.id}: {message['text']}"})

    async def me(message: Message) -> None:
        await send_response(
            message, Response.json({"id": message.user.id, "iss": message.user.claims["iss"]})
        )

    return [
        route("websocket.connect", channel_session_user_from_token(hs)(greet), path=r"^/ws/$"),
        route(
            "websocket.connect",
            channel_session_user_from_token(hs, on_failure="reject")(greet),
            path=r"^/strict/$",
        ),
        route("websocket.connect", channel_session_user_from_token(rs)(greet), path=r"^/rs/$"),
        route("websocket.receive", echo),
        route("http.request", token_user(hs)(me), path=r"^/me$"),
        route("http.request", token_user(rs)(me), path=r"^/rs/me$"),
    ]


def _ws_options(form: str, token: str | None) -> tuple[str, dict[str, Any]]:
    """The query string and open_websocket_url options that carry *token* in *form*."""
    if token is None or form == "none":
        return "", {}
    if form == "header":
        return "", {"extra_headers": [(b"authorization", f"Bearer {token}".encode())]}
    if form == "subprotocol":
        return "", {"subprotocols": [bearer_subprotocol(token)]}
    return f"?token={token}", {}


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "trio_channels.auth"]


def _assert_one_line(caplog: pytest.LogCaptureFixture, reason: str, token: str | None) -> None:
    """The refusal is one log line naming the reason, without a traceback or the token."""
    (record,) = _refusals(caplog)
    assert reason in record.getMessage() and record.exc_info is None
    assert "Traceback" not in caplog.text
    if token:
        assert token not in caplog.text


async def _connect_and_read(
    url: str, options: dict[str, Any]
) -> tuple[str | None, list[str | bytes], int | None]:
    """Connect, read the greeting, say "hi"; returns (accepted subprotocol, texts, close code)."""
    texts: list[str | bytes] = []
    code = None
    async with open_websocket_url(url, **options) as ws:
        subprotocol = ws.subprotocol
        try:
            texts.append(await ws.get_message())
            await ws.send_message("hi")
            texts.append(await ws.get_message())
        except ConnectionClosed as closed:
            code = closed.reason.code if closed.reason else None
    return subprotocol, texts, code


@pytest.mark.parametrize(("form", "case"), WS_PARAMS)
async def test_websocket_token(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, keys: Keys, form: str, case: str
) -> None:
    """A valid token in any form authenticates the connection and its later messages; every bad
    or missing one is a 4401 close after accept, logged in one line; the token is never echoed."""
    caplog.set_level(logging.INFO, logger="trio_channels.auth")
    make, reason = CASES[case]
    token = make() if make else None
    info = await start_server(routing(keys), user_loader=load_user)
    query, options = _ws_options(form, token)
    with trio.fail_after(20):
        subprotocol, texts, code = await _connect_and_read(ws_url(info.url, "/ws/" + query), options)
    assert subprotocol is None
    if reason is None:
        assert (texts, code) == (["hello alice", "alice: hi"], None)
        assert _refusals(caplog) == []
    else:
        assert (texts, code) == ([], 4401)
        _assert_one_line(caplog, reason, token)


@pytest.mark.parametrize(("form", "case"), HTTP_PARAMS)
async def test_http_token(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, keys: Keys, form: str, case: str
) -> None:
    """token_user on HTTP: 200 for a valid token; 401 with an RFC 6750 challenge otherwise."""
    caplog.set_level(logging.INFO, logger="trio_channels.auth")
    make, reason = CASES[case]
    token = make() if make else None
    info = await start_server(routing(keys))
    headers = {"authorization": f"Bearer {token}"} if form == "header" else {}
    params = {"token": token} if form == "query" else {}
    with trio.fail_after(20):
        async with httpx.AsyncClient() as client:
            response = await client.get(info.url + "/me", headers=headers, params=params)
    if reason is None:
        assert (response.status_code, response.json()) == (200, {"id": "alice", "iss": ISSUER})
        return
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    if case == "missing":
        assert challenge == 'Bearer realm="trio_channels"'
    else:
        assert challenge == 'Bearer realm="trio_channels", error="invalid_token"'
    _assert_one_line(caplog, reason, token)


async def test_rs256_tokens(start_server: StartServer, caplog: pytest.LogCaptureFixture, keys: Keys) -> None:
    """RS256 with a public key: a token signed by the private key passes; one signed by another
    key, and an HS256 token "signed" with the public key (algorithm confusion), are refused."""
    info = await start_server(routing(keys), user_loader=load_user)
    good = jwt.encode(claims(), keys.private, algorithm="RS256")
    other = jwt.encode(claims(), keys.other_private, algorithm="RS256")
    confused = hs256_signed_with(keys.public_pem)
    with trio.fail_after(20):
        options = {"extra_headers": [(b"authorization", f"Bearer {good}".encode())]}
        assert await _connect_and_read(ws_url(info.url, "/rs/"), options) == (
            None,
            ["hello alice", "alice: hi"],
            None,
        )
        async with httpx.AsyncClient() as client:
            answers = [
                await client.get(info.url + "/rs/me", headers={"authorization": f"Bearer {token}"})
                for token in (good, other, confused)
            ]
    assert [answer.status_code for answer in answers] == [200, 401, 401]
    reasons = [record.getMessage() for record in _refusals(caplog)]
    assert len(reasons) == 2
    assert "InvalidSignatureError" in reasons[0] and "InvalidAlgorithmError" in reasons[1]


async def test_reject_mode_denies_the_handshake(start_server: StartServer, keys: Keys) -> None:
    """on_failure="reject": a bad token gets HTTP 403 during the handshake, nothing is accepted."""
    info = await start_server(routing(keys), user_loader=load_user)
    with trio.fail_after(20):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(
                ws_url(info.url, "/strict/"), subprotocols=[bearer_subprotocol(unsigned())]
            ):
                pass
        assert rejected.value.status_code == 403
        options = {"subprotocols": [bearer_subprotocol(hs256())]}
        _, texts, _ = await _connect_and_read(ws_url(info.url, "/strict/"), options)
        assert texts == ["hello alice", "alice: hi"]


async def test_the_token_subprotocol_is_never_the_accepted_one(start_server: StartServer, keys: Keys) -> None:
    """Beside the token, the server accepts a real subprotocol it serves (--ws-protocol), never
    the token's."""
    config = InterfaceConfig(ws_protocols=("chat",))
    info = await start_server(routing(keys), user_loader=load_user, interface_config=config)
    token_protocol = bearer_subprotocol(hs256())
    with trio.fail_after(20):
        offered = {"subprotocols": [token_protocol, "chat"]}
        assert await _connect_and_read(ws_url(info.url, "/ws/"), offered) == (
            "chat",
            ["hello alice", "alice: hi"],
            None,
        )


async def test_a_malformed_token_subprotocol_is_refused(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, keys: Keys
) -> None:
    """A token subprotocol that is not base64url closes with 4401 (one line), not a traceback."""
    info = await start_server(routing(keys), user_loader=load_user)
    with trio.fail_after(20):
        offered = {"subprotocols": ["base64url.bearer.authorization.k8s.io.*not*base64*"]}
        assert await _connect_and_read(ws_url(info.url, "/ws/"), offered) == (None, [], 4401)
    _assert_one_line(caplog, "does not hold base64url", None)
