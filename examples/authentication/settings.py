CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "asgiref.inmemory.ChannelLayer",
        "ROUTING": "authentication.routing.channel_routing",
    },
}
# How to load a user from the id in a session: your application's users
AUTH_USER_LOADER = "authentication.users.load_user"
# The hosts whose pages may open WebSockets here (see allowed_hosts_only)
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
