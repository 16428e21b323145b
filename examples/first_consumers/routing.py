from trio_channels import route

channel_routing = [
    route("http.request", "examples.first_consumers.consumers.http_consumer"),
]
