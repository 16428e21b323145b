"""The benchmark protocol on Django Channels 4 with its in-memory channel layer (defaults).

* ``GET /hello``: an async Django view, ``Hello world! You asked for /hello``;
* WebSocket ``/echo/``: an ``AsyncWebsocketConsumer`` that sends every text frame back;
* WebSocket ``/chat/<room>/``: joins group ``chat-<room>`` before accepting; every text frame
  goes to the group with ``group_send`` (the sender included).

What a Channels 4 user would write for the same protocol, in one module (settings included).
Served by ``benchmarks/peers/serve_channels.py`` on uvicorn.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["channels"],
    MIDDLEWARE=[],
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    ASGI_APPLICATION=f"{__name__}.application",
    USE_TZ=True,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path, re_path  # noqa: E402


async def hello(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(f"Hello world! You asked for {request.path}", content_type="text/plain")
    # What Django's CommonMiddleware would add, without the rest of it: keep-alive needs a
    # length, or uvicorn answers chunked.
    response["Content-Length"] = str(len(response.content))
    return response


urlpatterns = [path("hello", hello)]


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data)


class Chat(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.group = "chat-" + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(self.group, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter(
            [re_path(r"^chat/(?P<room>[a-zA-Z0-9_]+)/$", Chat.as_asgi()), re_path(r"^echo/$", Echo.as_asgi())]
        ),
    }
)
