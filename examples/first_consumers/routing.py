from trio_channels import route

channel_routing = [
    route("http.request", "first_consumers.consumers.http_consumer"),
]
