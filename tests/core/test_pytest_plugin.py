"""The pytest plugin, in a pytest of its own (pytester): its fixtures work with and without
pytest-trio's ``trio_mode``, and a test they cannot serve fails saying why."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest
from trio_channels.testing import open_websocket


async def test_echo_through_the_live_server(channels_live_server):
    async with open_websocket(channels_live_server.url, "/echo/") as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"


async def test_channel_layer(channel_layer):
    await channel_layer.send("x", {"a": 1})
    assert await channel_layer.receive(["x"]) == ("x", {"a": 1})


def test_a_plain_def_test_is_told_the_fix(channels_live_server):
    pass


@pytest.mark.anyio
async def test_another_loop_is_told_the_fix(channel_layer):
    pass
"""


@pytest.mark.parametrize("trio_mode", [True, False])
def test_the_fixtures_work_with_and_without_trio_mode(pytester: pytest.Pytester, trio_mode: bool) -> None:
    pytester.makeini(f"[pytest]\ntrio_mode = {'true' if trio_mode else 'false'}\nmarkers = anyio\n")
    pytester.makepyfile(test_app=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:anyio")
    result.stdout.fnmatch_lines(
        [
            "*test_a_plain_def_test_is_told_the_fix uses channels_live_server, which are Trio fixtures:"
            " make the test 'async def'*"
        ]
    )
    if trio_mode:  # pytest-trio runs every async test on Trio, whatever other marker it has
        result.assert_outcomes(passed=3, errors=1)
    else:
        result.assert_outcomes(passed=2, errors=2)
        result.stdout.fnmatch_lines(
            [
                "*test_another_loop_is_told_the_fix uses channel_layer, which run on Trio: mark it @pytest.mark.trio*"
            ]
        )
    assert "Trio fixtures can only be used by Trio tests" not in result.stdout.str()


def test_channels_routing_overrides_what_the_live_server_serves(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest
from trio_channels import route
from trio_channels.http import Response, send_response


async def hello(message):
    await send_response(message, Response("hello from my routing"))


@pytest.fixture
def channels_routing():
    return [route("http.request", hello)]
"""
    )
    pytester.makepyfile(
        test_mine="""
import httpx


async def test_mine(channels_live_server):
    async with httpx.AsyncClient() as client:
        assert (await client.get(channels_live_server.url + "/")).text == "hello from my routing"
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
