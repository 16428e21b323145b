"""The machinery both backends share: the parked-receiver table and the small pure helpers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from layers._backend import Delivery, Receivers, fair_order, query_options, single_reader_names


async def test_claim_prefers_a_receiver_of_the_full_name() -> None:
    """A receiver parked on 'p!abc' gets p!abc's message before one parked on 'p!' does;
    other channels under the prefix go to the prefix's receiver."""
    receivers = Receivers()
    got: dict[str, Delivery] = {}

    async def receiver(key: str) -> None:
        got[key] = await receivers.park([key])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver, "p!")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(receiver, "p!abc")
        await trio.testing.wait_all_tasks_blocked()
        assert receivers.count(["p!"]) == 1 and receivers.count(["p!", "p!abc"]) == 2
        first = receivers.claim("p!abc", "p!")
        assert first is not None and first.names == ["p!abc"]
        first.wake(("p!abc", {"n": 1}, 0.0))
        second = receivers.claim("p!xyz", "p!")
        assert second is not None and second.names == ["p!"]
        second.wake(("p!xyz", {"n": 2}, 0.0))
        assert receivers.claim("p!xyz", "p!") is None
    assert got == {"p!abc": ("p!abc", {"n": 1}, 0.0), "p!": ("p!xyz", {"n": 2}, 0.0)}
    assert "p!" not in receivers and "p!abc" not in receivers


async def test_first_parked_first_served_and_cancel_unparks() -> None:
    """Receivers are served in parking order; a cancelled one leaves the table."""
    receivers = Receivers()
    served: dict[str, int] = {}

    async def receiver(name: str) -> None:
        _, message, _ = await receivers.park(["q"])
        served[name] = message["n"]

    async with trio.open_nursery() as nursery:
        for name in ("one", "two", "three"):
            nursery.start_soon(receiver, name)
            await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await receivers.park(["q", "r"])
        assert receivers.count(["q"]) == 3 and "r" not in receivers
        for n in range(3):
            waiter = receivers.claim("q", "q")
            assert waiter is not None
            waiter.wake(("q", {"n": n}, 0.0))
    assert served == {"one": 0, "two": 1, "three": 2}


def test_fair_order_shuffles_only_several() -> None:
    """One name comes back as it is; several in every order, over enough tries."""
    one = ["a"]
    assert fair_order(one) is one
    orders = {tuple(fair_order(["a", "b", "c"])) for _ in range(200)}
    assert len(orders) == 6


def test_single_reader_names() -> None:
    """new_channel patterns must end in '?' and be valid; names are fresh each time."""
    names = single_reader_names("body?")
    first, second = next(names), next(names)
    assert first.startswith("body?") and len(first) > 10 and first != second
    with pytest.raises(TypeError, match=r"'p!'.*must be a str ending in '\?'"):
        next(single_reader_names("p!"))
    with pytest.raises(TypeError, match="channel name"):
        next(single_reader_names("bad name?"))


def test_query_options() -> None:
    """Numbers are converted, text options kept, unknown keys ignored, bad numbers named."""
    assert query_options("u", "expiry=2.5&capacity=7&prefix=app&other=1", text=("prefix",)) == {
        "expiry": 2.5,
        "capacity": 7,
        "prefix": "app",
    }
    assert query_options("u", "prefix=app") == {}
    with pytest.raises(ValueError, match=r"layer URL 'u' is invalid: option capacity='x' must be a number"):
        query_options("u", "capacity=x")
