"""interface.proxy: which X-Forwarded-* headers count, as pure functions (uvicorn's rules)."""

from __future__ import annotations

from typing import Any

import pytest

from interface.proxy import apply_proxy_headers, parse_trusted_proxies

XFF = [[b"x-forwarded-for", b"198.51.100.7, 203.0.113.9, 10.0.0.1"]]


@pytest.mark.parametrize(
    ("allow", "peer", "expected"),
    [
        # Untrusted peer: the headers are ignored, whatever they say.
        ("127.0.0.1", "192.0.2.1", "192.0.2.1"),
        # Trusted peer: from the right, the first entry that is not a trusted proxy.
        ("127.0.0.1", "127.0.0.1", "10.0.0.1"),
        ("127.0.0.1,10.0.0.1", "127.0.0.1", "203.0.113.9"),
        ("127.0.0.0/8, 10.0.0.0/8", "127.0.0.5", "203.0.113.9"),
        ("127.0.0.1,10.0.0.1,203.0.113.0/24", "127.0.0.1", "198.51.100.7"),
        # Every hop trusted: the first one is the client.
        ("127.0.0.1,10.0.0.1,203.0.113.9,198.51.100.7", "127.0.0.1", "198.51.100.7"),
        # "*" trusts everyone, so the leftmost entry is the client.
        ("*", "192.0.2.1", "198.51.100.7"),
        # IPv6 peers and IPv4-mapped addresses.
        ("::1", "::1", "10.0.0.1"),
        ("127.0.0.1", "::ffff:127.0.0.1", "10.0.0.1"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_entry(allow: str, peer: str, expected: str) -> None:
    client, scheme = apply_proxy_headers(parse_trusted_proxies(allow), [peer, 5000], "http", XFF)
    assert client is not None and client[0] == expected
    assert scheme == "http"


def test_a_forged_entry_on_the_left_does_not_become_the_client() -> None:
    """The client wrote 'X-Forwarded-For: 1.2.3.4'; nginx appended the real peer (203.0.113.9)."""
    headers = [[b"x-forwarded-for", b"1.2.3.4"], [b"x-forwarded-for", b"203.0.113.9"]]
    client, _ = apply_proxy_headers(parse_trusted_proxies("127.0.0.1"), ["127.0.0.1", 1], "http", headers)
    assert client == ["203.0.113.9", 0]
    junk = [[b"x-forwarded-for", b"203.0.113.9, not-an-address"]]
    client, _ = apply_proxy_headers(parse_trusted_proxies("127.0.0.1"), ["127.0.0.1", 1], "http", junk)
    assert client == ["not-an-address", 0], "a non-address is never a trusted proxy"


@pytest.mark.parametrize(
    ("proto", "scheme", "expected"),
    [("https", "http", "https"), ("https", "ws", "wss"), ("http", "wss", "ws"), ("HTTPS, http", "http", "https"),
     ("gopher", "http", "http")],
)  # fmt: skip
def test_forwarded_proto(proto: str, scheme: str, expected: str) -> None:
    headers = [[b"x-forwarded-proto", proto.encode()]]
    _, got = apply_proxy_headers(parse_trusted_proxies("127.0.0.1"), ["127.0.0.1", 1], scheme, headers)
    assert got == expected


def test_forwarded_port_and_unix_peers() -> None:
    """X-Forwarded-Port is the client's port (Daphne); a Unix socket peer (None) is a trusted
    local proxy, as gunicorn treats it."""
    headers: list[Any] = [[b"x-forwarded-for", b"203.0.113.9"], [b"x-forwarded-port", b"4433"]]
    assert apply_proxy_headers(parse_trusted_proxies("127.0.0.1"), None, "http", headers)[0] == [
        "203.0.113.9",
        4433,
    ]
    headers[1] = [b"x-forwarded-port", b"99999"]
    assert apply_proxy_headers(parse_trusted_proxies(""), None, "http", headers)[0] == ["203.0.113.9", 0]


def test_no_headers_changes_nothing() -> None:
    assert apply_proxy_headers(parse_trusted_proxies("*"), ["127.0.0.1", 9], "ws", []) == (
        ["127.0.0.1", 9],
        "ws",
    )


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"forwarded_allow_ips entry 'localhost' is invalid"):
        parse_trusted_proxies("127.0.0.1, localhost")
    assert parse_trusted_proxies(["10.0.0.0/8", "127.0.0.1,::1"]).networks[2].version == 6
