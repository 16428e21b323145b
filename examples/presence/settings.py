CHANNEL_LAYERS = {
    "default": {
        # With several processes: "layers.redis.RedisChannelLayer" and "hosts": [...] in CONFIG
        "BACKEND": "layers.InMemoryChannelLayer",
        "CONFIG": {
            # Keep each room's last 100 messages, for an hour after the last one
            "history": {"room-*": {"size": 100, "ttl": 3600}},
            # Tell each room who joins and who leaves
            "presence": {"room-*": {"events": True}},
        },
        "ROUTING": "presence.routing.channel_routing",
    },
}
