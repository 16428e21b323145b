from trio_channels import route
from trio_channels.http import file_consumer

from .consumers import ws_add, ws_disconnect, ws_message

channel_routing = [
    route("websocket.connect", ws_add),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", file_consumer("ordering/index.html"), path=r"^/$"),
]
