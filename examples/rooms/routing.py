from trio_channels import route
from trio_channels.http import file_consumer

from .consumers import ws_connect, ws_disconnect, ws_message

channel_routing = [
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", file_consumer("rooms/index.html"), path=r"^/$"),
]
