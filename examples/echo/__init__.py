"""Tutorial step 2: a WebSocket echo server."""
