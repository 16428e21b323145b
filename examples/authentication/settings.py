# python -m trio_channels run --settings examples.authentication.settings
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "asgiref.inmemory.ChannelLayer",
        "ROUTING": "examples.authentication.routing.channel_routing",
    },
}
AUTH_USER_LOADER = "examples.authentication.users.load_user"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
