"""The tutorial's "who is here, and catching up": presence, and history with recovery."""
