from examples.pages import html_page
from examples.rooms.consumers import ws_connect, ws_disconnect, ws_message
from trio_channels import route

channel_routing = [
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", html_page("examples.rooms"), path=r"^/$"),
]
