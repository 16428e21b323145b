"""Serving each example's HTML page (the seed used the browser console on any page)."""

from __future__ import annotations

from importlib import resources

from trio_channels import Message
from trio_channels.http import Response, send_response
from trio_channels.routing import Consumer


def html_page(package: str, name: str = "index.html") -> Consumer:
    """A consumer answering with *name* from *package* (read once, at start-up)."""
    body = resources.files(package).joinpath(name).read_bytes()

    async def page(message: Message) -> None:
        await send_response(message, Response(body))

    page.__qualname__ = f"html_page({package!r}, {name!r})"
    return page
