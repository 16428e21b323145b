from trio_channels import route

from .consumers import ws_add, ws_disconnect, ws_message
from .views import login_page, login_view

channel_routing = [
    route("http.request", login_page, path=r"^/$"),
    route("http.request", login_view, path=r"^/login$", method=r"^POST$"),
    route("websocket.connect", ws_add),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
]
