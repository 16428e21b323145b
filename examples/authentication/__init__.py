"""Tutorial steps 6 and 7: authentication (HTTP session -> WebSocket user) and origin security."""
