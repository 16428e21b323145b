from examples.chat.consumers import ws_add, ws_disconnect, ws_message
from examples.pages import html_page
from trio_channels import route

channel_routing = [
    route("websocket.connect", ws_add),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", html_page("examples.echo"), path=r"^/$"),
]
