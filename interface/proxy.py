"""Proxy headers, the safe way: ``X-Forwarded-*`` count only when a trusted proxy sent them.

uvicorn's rules (``--forwarded-allow-ips``): the headers are honoured only when the immediate
peer is trusted (an address or network in the list; ``*`` trusts everyone). Each proxy
*appends* the address it got the request from to ``X-Forwarded-For``, so the entries a client
can forge are on the left: the client address is the **rightmost entry that is not a trusted
proxy** (with ``*``, or when every entry is trusted, the leftmost). A connection over a Unix
socket comes from a local process the socket's permissions let in, so it counts as a trusted
proxy, as gunicorn treats it.

``X-Forwarded-Proto`` sets the scheme (``https``/``http``, ``wss``/``ws`` on a WebSocket; other
values are ignored) and ``X-Forwarded-Port`` the client's port (Daphne's reading; 0 without it).
Everything here is pure: :func:`apply_proxy_headers` maps what the socket says plus the
headers to what the application is told.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = ["TrustedProxies", "apply_proxy_headers", "parse_trusted_proxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SCHEMES = {"http": ("http", "ws"), "https": ("https", "wss"), "ws": ("http", "ws"), "wss": ("https", "wss")}


@attrs.frozen
class TrustedProxies:
    """The proxies whose ``X-Forwarded-*`` headers count (build with :func:`parse_trusted_proxies`)."""

    everyone: bool = False
    networks: tuple[_Network, ...] = ()

    def __contains__(self, host: object) -> bool:
        """Whether *host* (an address as text, ``None`` for a Unix socket peer) is trusted."""
        if self.everyone or host is None:
            return True
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False  # not an address (a forged "unknown", a host name): never a proxy
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client_of(self, forwarded_for: Sequence[str]) -> str:
        """The client address in an ``X-Forwarded-For`` list (left to right, as sent)."""
        if self.everyone:
            return forwarded_for[0]
        for host in reversed(forwarded_for):
            if host not in self:
                return host
        return forwarded_for[0]  # every hop is a trusted proxy: the first one is the client


def parse_trusted_proxies(spec: str | Iterable[str]) -> TrustedProxies:
    """``"127.0.0.1"``, ``"10.0.0.0/8, 192.168.1.7"``, ``"*"``, or a sequence of those.

    Raises :exc:`ValueError` naming an entry that is neither ``*``, an IP address nor a network.
    """
    entries = (
        spec.split(",") if isinstance(spec, str) else [part for item in spec for part in item.split(",")]
    )
    everyone = False
    networks: list[_Network] = []
    for entry in (part.strip() for part in entries):
        if not entry:
            continue
        if entry == "*":
            everyone = True
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"forwarded_allow_ips entry {entry!r} is invalid: use IP addresses, networks "
                "(10.0.0.0/8) or '*', separated by commas"
            ) from None
    return TrustedProxies(everyone=everyone, networks=tuple(networks))


def _header(headers: Iterable[Sequence[bytes]], name: bytes) -> str | None:
    # Several headers of one name are one comma-separated list (RFC 9110 §5.3).
    values = [value.decode("latin-1") for key, value in headers if key == name]
    return ",".join(values) if values else None


def apply_proxy_headers(
    trusted: TrustedProxies,
    client: list[Any] | None,
    scheme: str,
    headers: Iterable[Sequence[bytes]],
) -> tuple[list[Any] | None, str]:
    """The client address and scheme the application sees, given the peer's *client* address
    (``None`` for a Unix socket), the connection's *scheme* and its (lower-cased) *headers*."""
    if (client[0] if client else None) not in trusted:
        return client, scheme
    headers = list(headers)
    forwarded_for = _header(headers, b"x-forwarded-for")
    if forwarded_for is not None:
        hosts = [host.strip() for host in forwarded_for.split(",") if host.strip()]
        if hosts:
            port = (_header(headers, b"x-forwarded-port") or "").strip()
            client = [trusted.client_of(hosts), int(port) if port.isdigit() and int(port) <= 65535 else 0]
    proto = _header(headers, b"x-forwarded-proto")
    if proto is not None:
        value = proto.split(",")[0].strip().lower()
        if value in _SCHEMES:
            http, websocket = _SCHEMES[value]
            scheme = websocket if scheme in ("ws", "wss") else http
    return client, scheme
