from trio_channels import route
from trio_channels.http import file_consumer

from .consumers import ws_message

channel_routing = [
    route("websocket.receive", ws_message),
    # A page of the server, to run the JavaScript from
    route("http.request", file_consumer("echo/index.html"), path=r"^/$"),
]
