from trio_channels import route
from trio_channels.http import file_consumer

from .consumers import ws_add, ws_disconnect, ws_message

channel_routing = [
    route("websocket.connect", ws_add),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    # The echo step's page: the same JavaScript
    route("http.request", file_consumer("echo/index.html"), path=r"^/$"),
]
