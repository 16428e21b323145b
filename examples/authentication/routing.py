from examples.authentication.consumers import ws_add, ws_disconnect, ws_message
from examples.authentication.views import login_page, login_view
from trio_channels import route

channel_routing = [
    route("http.request", login_page, path=r"^/$"),
    route("http.request", login_view, path=r"^/login$", method=r"^POST$"),
    route("websocket.connect", ws_add),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
]
