"""Tutorial step 5: persisting data: the room chosen at connect, in the channel session."""
