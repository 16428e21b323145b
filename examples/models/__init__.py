"""Tutorial step 9: a custom channel whose consumer saves to SQLite and broadcasts."""
