"""InterfaceConfig: validated when made, each error naming the field and the value."""

from __future__ import annotations

from typing import Any

import pytest

from interface import InterfaceConfig
from interface.proxy import parse_trusted_proxies


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"http_timeout": 0}, "http_timeout must be a number of seconds > 0, got 0"),
        (
            {"websocket_connect_timeout": "5"},
            "websocket_connect_timeout must be a number of seconds > 0, got '5'",
        ),
        ({"websocket_timeout": "long"}, "websocket_timeout must be a number of seconds or None, got 'long'"),
        ({"ping_interval": -1}, "ping_interval must be a number of seconds >= 0, got -1"),
        ({"max_body_size": 0}, "max_body_size must be an int >= 1 (bytes), got 0"),
        (
            {"websocket_max_message_size": 1.5},
            "websocket_max_message_size must be an int >= 1 (bytes), got 1.5",
        ),
        ({"root_path": "app"}, "root_path must be '' or a path starting with '/', got 'app'"),
        ({"proxy_headers": "yes"}, "'proxy_headers' must be <class 'bool'>"),
        ({"forwarded_allow_ips": "127.0.0.1,nope"}, "forwarded_allow_ips entry 'nope' is invalid"),
        ({"ws_protocols": ["chat", 2]}, "ws_protocols must be a sequence of str, got ('chat', 2)"),
        ({"limit_concurrency": 0}, "limit_concurrency must be an int >= 1 or None, got 0"),
        ({"timeout_keep_alive": 0}, "timeout_keep_alive must be a number of seconds > 0, got 0"),
        ({"reply_buffer": 0}, "reply_buffer must be an int >= 1, got 0"),
    ],
)
def test_a_bad_field_names_itself_and_the_value(fields: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as failed:
        InterfaceConfig(**fields)
    assert message in str(failed.value)


def test_conversions() -> None:
    config = InterfaceConfig(ws_protocols="chat", forwarded_allow_ips="10.0.0.0/8, 127.0.0.1")
    assert config.ws_protocols == ("chat",)
    assert config.forwarded_allow_ips == parse_trusted_proxies(["10.0.0.0/8", "127.0.0.1"])
    assert "10.1.2.3" in config.forwarded_allow_ips and "192.0.2.1" not in config.forwarded_allow_ips
    assert "127.0.0.1" in InterfaceConfig().forwarded_allow_ips
    assert InterfaceConfig().timeout_keep_alive == 5 and InterfaceConfig().limit_concurrency is None
