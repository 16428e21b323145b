from trio_channels import route
from trio_channels.http import file_consumer

from .consumers import ws_connect, ws_disconnect, ws_message

room_and_name = r"^/(?P<room>[a-zA-Z0-9_]+)/(?P<name>[a-zA-Z0-9_]+)/$"

channel_routing = [
    route("websocket.connect", ws_connect, path=room_and_name),
    route("websocket.receive", ws_message, path=room_and_name),
    route("websocket.disconnect", ws_disconnect, path=room_and_name),
    route("http.request", file_consumer("presence/index.html"), path=r"^/$"),
]
