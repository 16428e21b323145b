# python -m trio_channels run --settings examples.first_consumers.settings
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "asgiref.inmemory.ChannelLayer",
        "ROUTING": "examples.first_consumers.routing.channel_routing",
    },
}
