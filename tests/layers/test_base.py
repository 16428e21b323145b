"""The pure contract: names, messages, capacity maps, URLs (plain synchronous tests)."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest

import layers
from layers.base import CapacityMap, decode_message, encode_message, parse_delay_message

VALID_CHANNELS = ["http.request", "http.response!ab0def", "http.request.body?ab0def", "0.a_b-c?d_e-f.1", "x!"]


@pytest.mark.parametrize("name", VALID_CHANNELS)
def test_valid_channel_names(name: str) -> None:
    """asgiref's valid examples pass and come back unchanged."""
    assert layers.validate_channel_name(name) == name


def test_receive_mode_needs_the_bare_prefix() -> None:
    """In receive mode a '!' name must end at '!'."""
    assert layers.validate_channel_name("p!", receive=True) == "p!"
    with pytest.raises(TypeError, match="receive on the process prefix 'p!'"):
        layers.validate_channel_name("p!local", receive=True)


@pytest.mark.parametrize("name", ["foo", "foo.bar-baz_1"])
def test_valid_group_names(name: str) -> None:
    """Group names use the channel alphabet without '!' or '?'."""
    assert layers.validate_group_name(name) == name


def test_name_length_limit_is_99() -> None:
    """Names shorter than 100 characters are fine; 100 is too long."""
    layers.validate_channel_name("a" * 99)
    with pytest.raises(TypeError, match="100 characters long"):
        layers.validate_channel_name("a" * 100)


def test_non_local_name() -> None:
    """The non-local name of a process-specific channel is its prefix through '!'."""
    assert layers.non_local_name("interface.x!abc") == "interface.x!"
    assert layers.non_local_name("http.request") == "http.request"
    assert layers.non_local_name("body?abc") == "body?abc"


def test_get_capacity_globs_regexes_and_order() -> None:
    """reference §2.5: first matching pattern wins, globs and regexes, default otherwise.

    A process-specific channel is matched by its prefix (each channel under it still counts alone),
    so a regex for one ends at '!'.
    """
    capacities = CapacityMap.build(
        42,
        OrderedDict(
            [("http.response!*", 10), ("http.request", 100), (re.compile(r"^websocket.send\!$"), 20)]
        ),
    )
    assert capacities.get("http.disconnect") == 42
    assert capacities.get("http.request") == 100
    assert capacities.get("http.response!abcdefgh") == 10
    assert capacities.get("websocket.send!abc") == 20


@pytest.mark.parametrize(
    ("mapping", "error"),
    [({"x": 0}, "channel_capacity\\['x'\\] is invalid: 0"), ({3: 1}, "channel_capacity key 3 is invalid")],
)
def test_bad_capacity_maps(mapping: dict[object, int], error: str) -> None:
    """A bad channel_capacity entry fails at construction, naming it."""
    with pytest.raises((TypeError, ValueError), match=error):
        layers.InMemoryChannelLayer(channel_capacity=mapping)


@pytest.mark.parametrize(
    ("option", "value"),
    [("expiry", 0), ("group_expiry", -1), ("capacity", 0), ("capacity", 1.5), ("expiry", float("inf"))],
)
def test_bad_layer_options(option: str, value: object) -> None:
    """A bad option fails at construction and names the option."""
    with pytest.raises(ValueError, match=option):
        layers.InMemoryChannelLayer(**{option: value})


def test_encoding_keeps_bytes_and_text_apart() -> None:
    """The stored form round-trips bytes and text as themselves."""
    message = {"b": b"\x00\xff", "t": "\u00e9", "l": [1, 2.5, None, True], "d": {"k": b""}}
    assert decode_message(encode_message(message)) == message


def test_error_paths_name_the_bad_value() -> None:
    """Deep paths are spelled the way you would index them."""
    with pytest.raises(TypeError, match=r"message\['a'\]\[0\]\['b'\] is invalid: complex"):
        layers.validate_message({"a": [{"b": 1j}]})


def test_subclasses_of_allowed_types_fail_with_the_conversion() -> None:
    """A user's IntEnum (or another subclass) fails its sender, naming the path and the fix."""
    import enum

    class Code(enum.IntEnum):
        BYE = 4000

    with pytest.raises(
        TypeError,
        match=r"message\['close'\] is invalid: Code values are not allowed \(a subclass of int: convert it with int\(\.\.\.\)\)",
    ):
        layers.validate_message({"close": Code.BYE})
    with pytest.raises(TypeError, match=r"message\['d'\] is invalid: OrderedDict .* convert it with dict"):
        layers.validate_message({"d": OrderedDict()})


def test_parse_delay_message() -> None:
    """asgi.delay messages give (channel, content, seconds); bad ones name the key."""
    assert parse_delay_message({"channel": "x", "content": {"a": 1}, "delay": 1500}) == ("x", {"a": 1}, 1.5)
    with pytest.raises(ValueError, match=r"missing message\['content'\]"):
        parse_delay_message({"channel": "x", "delay": 1})
    with pytest.raises(TypeError, match="channel name"):
        parse_delay_message({"channel": "bad name", "content": {}, "delay": 1})


def test_from_url_memory() -> None:
    """memory:// builds the in-memory layer; query options and keywords configure it."""
    layer = layers.from_url("memory://?expiry=5&capacity=7", group_expiry=9)
    assert isinstance(layer, layers.InMemoryChannelLayer)
    assert (layer.expiry, layer.capacity, layer.group_expiry) == (5, 7, 9)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://x", "unknown scheme 'ftp'"),
        ("memory://host", "write it as 'memory://'"),
        ("memory://?capacity=lots", "capacity='lots' must be a number"),
    ],
)
def test_from_url_errors(url: str, error: str) -> None:
    """Bad layer URLs are a ValueError naming the URL and the fix."""
    with pytest.raises(ValueError, match=error) as info:
        layers.from_url(url)
    assert url in str(info.value)


def test_membership_lost_is_one_event_per_loss() -> None:
    """A watcher of membership_lost wakes once per reported loss and finds a fresh, unset
    event for the next one; a layer that never loses memberships never sets it."""
    layer = layers.InMemoryChannelLayer()
    first = layer.membership_lost
    assert not first.is_set() and layer.last_membership_lost is None
    loss = layers.MembershipLost(server="redis://a:6379/0", reason="restarted without its data")
    layer._report_membership_lost(loss)
    assert first.is_set() and layer.last_membership_lost == loss
    assert layer.membership_lost is not first and not layer.membership_lost.is_set()
    assert str(loss) == "redis://a:6379/0: restarted without its data"


@pytest.mark.parametrize("existing", [0, 1, 14, 15, 16, 65535])
def test_append_encoded_splices_one_item_into_a_list(existing: int) -> None:
    """Issue 12 (the session cookie): appending to an encoded message's list gives what
    re-encoding would, across every msgpack array header size, the body copied untouched."""
    from layers.base import append_encoded

    headers = [[b"x-%d" % n, b"v"] for n in range(existing)]
    message = {"status": 200, "headers": headers, "content": b"\x00" * 100_000, "more_content": False}
    data = append_encoded(
        encode_message(message, 2**24), "headers", [b"set-cookie", b"id=1"], require="status", max_size=2**24
    )
    assert data is not None
    assert decode_message(data) == {**message, "headers": [*headers, [b"set-cookie", b"id=1"]]}


def test_append_encoded_makes_a_missing_list_and_refuses_what_it_cannot_do() -> None:
    """A missing list is made (also past 15 keys); no required key, a non-list value or data
    that is not a map give None; a bad item is a TypeError naming it; the size limit holds."""
    from layers.base import MessageTooLarge, append_encoded

    many = {f"k{n}": n for n in range(15)} | {"status": 204}
    data = append_encoded(encode_message(many), "headers", [b"a", b"b"], require="status")
    assert data is not None and decode_message(data) == {**many, "headers": [[b"a", b"b"]]}
    assert append_encoded(encode_message({"text": "x"}), "headers", [b"a", b"b"], require="status") is None
    assert append_encoded(encode_message({"status": 200, "headers": "no"}), "headers", [b"a", b"b"]) is None
    assert append_encoded(b"\x93\x01\x02\x03", "headers", [b"a", b"b"]) is None
    with pytest.raises(TypeError, match=r"message\['headers'\]\[-1\]\[0\] is invalid: set values"):
        append_encoded(encode_message({"status": 200}), "headers", [{1}, b"b"])
    with pytest.raises(MessageTooLarge, match="over the layer's limit of 40 bytes"):
        append_encoded(
            encode_message({"status": 200, "content": b"x" * 30}), "headers", [b"a", b"b"], max_size=40
        )
