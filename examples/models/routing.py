from trio_channels import route
from trio_channels.http import file_consumer

from .consumers import announce, msg_consumer, ws_connect, ws_disconnect, ws_message

channel_routing = [
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("chat-messages", msg_consumer),
    route("http.request", announce, path=r"^/announce/(?P<room>[a-zA-Z0-9_]+)/$", method=r"^POST$"),
    # The page of the "persisting data" step
    route("http.request", file_consumer("rooms/index.html"), path=r"^/$"),
]
