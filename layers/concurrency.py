"""Small structured-concurrency helpers shared by every package (layers has no dependencies)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["leaves", "open_service_nursery"]


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside *exc* (itself if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@contextlib.asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for background services whose lone error reaches the caller unwrapped.

    Internal nurseries stay strict; this only collapses a group holding exactly one
    exception (other than ``trio.Cancelled``) into that exception, so the public entry points
    raise what their users expect. ``KeyboardInterrupt`` always wins.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        found = leaves(group)
        for leaf in found:
            if isinstance(leaf, KeyboardInterrupt):
                raise leaf from group
        real = [leaf for leaf in found if not isinstance(leaf, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        if not real and len(found) >= 1:
            raise found[0] from None
        raise
