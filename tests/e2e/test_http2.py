"""HTTP/2 still goes through Hypercorn on the main port; HTTP/1.1 and WebSockets over TLS
take the main port's own paths (issue 12). Real TLS with a certificate made by the test."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import open_websocket_url

from trio_channels import Message, route
from trio_channels.http import Response, send_response

from .conftest import StartServer, ws_url


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (certfile, keyfile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(certfile), str(keyfile)


def _trusting(certfile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certfile)


async def _consumer(message: Message) -> None:
    text = f"{message['http_version']} {message['scheme']} {message['path']} {len(message['body'])}"
    await send_response(message, Response(text, content_type="text/plain"))


@pytest.mark.parametrize(("http2", "version"), [(True, "HTTP/2"), (False, "HTTP/1.1")])
async def test_tls_serves_http2_by_alpn_and_http11_itself(
    start_server: StartServer, certificate: tuple[str, str], http2: bool, version: str
) -> None:
    """On a TLS bind a client offering h2 gets HTTP/2 (Hypercorn); one offering only
    http/1.1 gets the main port's own HTTP/1.1; both reach the consumer the same way."""
    certfile, keyfile = certificate
    info = await start_server([route("http.request", _consumer)], certfile=certfile, keyfile=keyfile)
    assert info.url.startswith("https://")
    async with httpx.AsyncClient(http2=http2, verify=_trusting(certfile)) as client:
        with trio.fail_after(10):
            responses = [await client.post(info.url + f"/p{index}", content=b"abc") for index in range(3)]
    assert [response.http_version for response in responses] == [version] * 3
    wire = "2" if http2 else "1.1"
    assert [response.text for response in responses] == [f"{wire} https /p{index} 3" for index in range(3)]


async def test_h2c_prior_knowledge(start_server: StartServer) -> None:
    """HTTP/2 without TLS (prior knowledge) is recognised by its preface and served by Hypercorn."""
    info = await start_server([route("http.request", _consumer)])
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        with trio.fail_after(10):
            response = await client.get(info.url + "/h2c")
    assert (response.http_version, response.text) == ("HTTP/2", "2 http /h2c 0")


async def test_websocket_over_tls_on_the_main_port(
    start_server: StartServer, certificate: tuple[str, str]
) -> None:
    """wss:// on the main port takes the WebSocket fast path, with the wss scheme."""
    certfile, keyfile = certificate
    seen: list[dict[str, Any]] = []

    async def connect(message: Message) -> None:
        seen.append(dict(message.content))
        await message.reply_channel.send({"accept": True, "text": "hello"})  # type: ignore[union-attr]

    info = await start_server([route("websocket.connect", connect)], certfile=certfile, keyfile=keyfile)
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/tls/"), ssl_context=_trusting(certfile)) as ws:
            assert await ws.get_message() == "hello"
    assert seen[0]["scheme"] == "wss" and seen[0]["path"] == "/tls/"
