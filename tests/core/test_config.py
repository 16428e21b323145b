"""ServerConfig: one frozen, validated value for serve(), the CLI and settings modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from interface import InterfaceConfig
from layers import InMemoryChannelLayer
from trio_channels import ServerConfig
from trio_channels.config import DEMO_ROUTING, ConfigurationError, load_settings
from trio_channels.routing import Router, import_by_path

BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"concurrency": 0}, "concurrency must be an int >= 1, got 0"),
    ({"concurrency": 2.5}, "concurrency must be an int >= 1, got 2.5"),
    ({"concurrency": True}, "concurrency must be an int >= 1, got True"),
    ({"workers": -1}, "workers must be an int >= 0, got -1"),
    ({"consumer_timeout": 0}, "consumer_timeout must be a number of seconds > 0, got 0"),
    ({"consumer_timeout": "5"}, "consumer_timeout must be a number of seconds > 0, got '5'"),
    ({"grace_period": -1}, "grace_period must be a number of seconds >= 0, got -1"),
    ({"bind": "nonsense"}, "bind 'nonsense' is invalid"),
    ({"ws_bind": ["127.0.0.1:99999"]}, "bind '127.0.0.1:99999' is invalid"),
    ({"uds_perms": 0o1777}, "uds_perms must be a file mode from 0o000 to 0o777, like 0o660, got 1023"),
    ({"uds_perms": "660"}, "uds_perms must be a file mode"),
    ({"layer": "carrier-pigeon://x"}, "unknown scheme 'carrier-pigeon'"),
    ({"layer": "memory://?capacty=3"}, "unknown option 'capacty'"),
    (
        {"certfile": "cert.pem"},
        "TLS needs both a certfile and a keyfile, got certfile='cert.pem' keyfile=None",
    ),
    ({"workers": 0}, "the in-memory layer is not cross-process"),
    ({"interface": False, "layer": "memory://"}, "the in-memory layer is not cross-process"),
    ({"interface": False, "workers": 0, "layer": "redis://localhost/0"}, "nothing to run"),
    ({"bind": [], "ws_bind": []}, "an interface needs at least one address"),
    ({"session_store": "mongodb://x"}, "session_store 'mongodb://x' is invalid: use memory://"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS, ids=lambda value: str(value)[:50])
def test_a_bad_field_is_an_error_naming_the_option_and_the_value(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as failed:
        ServerConfig(**fields)
    assert message in str(failed.value)


def test_the_example_from_the_issue() -> None:
    with pytest.raises(ValueError, match=r"^concurrency must be an int >= 1, got 0$"):
        ServerConfig(concurrency=0)


def test_wrong_kinds_are_type_errors() -> None:
    with pytest.raises(TypeError, match=r"interface_config must be an interface\.InterfaceConfig"):
        ServerConfig(interface_config={"http_timeout": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="layer must be a channel layer, a layer URL or None, got 42"):
        ServerConfig(layer=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="user_loader must be a callable or its import path, got 3"):
        ServerConfig(user_loader=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="http_app must be a callable or its import path"):
        ServerConfig(http_app=b"app")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only_channels takes strings, got 3"):
        ServerConfig(only_channels=["http.*", 3])  # type: ignore[list-item]


def test_one_string_is_one_address_and_sequences_become_tuples() -> None:
    config = ServerConfig(
        bind="127.0.0.1:0", ws_bind=["127.0.0.1:0", "unix:/tmp/x.sock"], allowed_hosts=["a"]
    )
    assert config.bind == ("127.0.0.1:0",)
    assert config.ws_bind == ("127.0.0.1:0", "unix:/tmp/x.sock")
    assert config.allowed_hosts == ("a",)
    assert ServerConfig(only_channels="http.*").only_channels == ("http.*",)
    assert ServerConfig(workers=True).workers == 1


def test_frozen_and_evolve_validates_again() -> None:
    config = ServerConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.concurrency = 3  # type: ignore[misc]
    assert config.evolve(concurrency=3).concurrency == 3
    with pytest.raises(ValueError, match="concurrency must be an int >= 1, got -3"):
        config.evolve(concurrency=-3)


def test_defaults_are_the_demo_s() -> None:
    config = ServerConfig()
    assert config.bind == ("127.0.0.1:8000",) and config.workers == 1 and config.interface
    assert config.in_memory and isinstance(config.make_layer(), InMemoryChannelLayer)
    assert config.interface_config == InterfaceConfig()
    assert config.uds_perms == 0o660


def test_a_layer_url_makes_a_new_layer_each_time() -> None:
    config = ServerConfig(layer="memory://?capacity=7")
    first, second = config.make_layer(), config.make_layer()
    assert first is not second and first.capacity == 7
    given = InMemoryChannelLayer()
    assert ServerConfig(layer=given).make_layer() is given


def test_the_demo_routing_is_one_constant_that_imports() -> None:
    assert Router(DEMO_ROUTING).channels()


def test_import_paths_in_both_forms() -> None:
    """``module:attr`` (uvicorn's form, attr may be dotted) and ``module.attr`` both import."""
    assert import_by_path("trio_channels.demo.routing:routing", "routing") is import_by_path(
        "trio_channels.demo.routing.routing", "routing"
    )
    assert import_by_path("trio_channels:ServerConfig.evolve", "x") is ServerConfig.evolve
    with pytest.raises(ImportError, match=r"'trio_channels:ServerConfig' has no 'nope'"):
        import_by_path("trio_channels:ServerConfig.nope", "x")


def test_settings_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings reads CHANNEL_LAYERS (a Channels 1 backend name works) and the other settings."""
    (tmp_path / "my_settings.py").write_text(
        "CHANNEL_LAYERS = {'default': {'BACKEND': 'asgiref.inmemory.ChannelLayer', 'CONFIG': {'capacity': 9},\n"
        "                              'ROUTING': 'tests.e2e.sample_app:channel_routing'}}\n"
        "ALLOWED_HOSTS = ['example.com']\n"
        "AUTH_USER_LOADER = 'tests.core.test_config:load_user'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        settings = load_settings("my_settings")
    finally:
        sys.modules.pop("my_settings", None)
    assert settings.routing == "tests.e2e.sample_app:channel_routing"
    config = settings.config(concurrency=5)
    assert isinstance(config.layer, InMemoryChannelLayer) and config.layer.capacity == 9
    assert config.allowed_hosts == ("example.com",)
    assert config.user_loader is load_user
    assert config.concurrency == 5


def test_a_bad_settings_module_is_one_line() -> None:
    with pytest.raises(ConfigurationError, match="settings module 'nowhere_settings' could not be imported"):
        load_settings("nowhere_settings")
    with pytest.raises(ConfigurationError, match=r"settings module 'tests.core' needs CHANNEL_LAYERS"):
        load_settings("tests.core")


async def load_user(user_id: Any) -> Any:
    return user_id


def test_each_supervised_process_gets_the_next_metrics_port() -> None:
    """--processes N: child i serves metrics on the port + i - 1; port 0 stays 0; past 65535 is refused."""
    from trio_channels.config import metrics_bind_for_process

    assert metrics_bind_for_process("127.0.0.1:9100", 1) == "127.0.0.1:9100"
    assert metrics_bind_for_process("127.0.0.1:9100", 3) == "127.0.0.1:9102"
    assert metrics_bind_for_process("[::1]:9100", 2) == "[::1]:9101"
    assert metrics_bind_for_process("0.0.0.0:0", 4) == "0.0.0.0:0"
    with pytest.raises(
        ValueError, match=r"metrics_bind '127.0.0.1:65535': process 2 would listen on port 65536"
    ):
        metrics_bind_for_process("127.0.0.1:65535", 2)


def test_metrics_bind_takes_host_port_only() -> None:
    """A bad metrics_bind fails when the config is made, naming it."""
    with pytest.raises(ValueError, match=r"metrics_bind 'localhost' is invalid"):
        ServerConfig(metrics_bind="localhost")
    with pytest.raises(ValueError, match=r"metrics_bind 'fd://3' is invalid: write it as host:port"):
        ServerConfig(metrics_bind="fd://3")
    assert ServerConfig(metrics_bind="127.0.0.1:0").metrics_bind == "127.0.0.1:0"
