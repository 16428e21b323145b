"""Tutorial step 10: enforcing ordering."""
