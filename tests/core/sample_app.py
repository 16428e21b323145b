"""Consumers and routing lists imported by dotted path in the routing tests."""

from __future__ import annotations

from trio_channels import Message, route

calls: list[str] = []


async def http_consumer(message: Message) -> None:
    calls.append(message["path"])


def sync_consumer(message: Message) -> None:
    calls.append(message["path"])


inner_routing = [route("http.request", http_consumer, path=r"^/inner/$")]
