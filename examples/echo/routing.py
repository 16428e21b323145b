from examples.echo.consumers import ws_message
from examples.pages import html_page
from trio_channels import route

channel_routing = [
    route("websocket.receive", ws_message),
    route("http.request", html_page("examples.echo"), path=r"^/$"),
]
