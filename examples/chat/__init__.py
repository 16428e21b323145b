"""Tutorial step 3: groups and a real chat."""
