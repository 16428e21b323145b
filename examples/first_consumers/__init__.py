"""Tutorial step 1: a consumer answering every HTTP request."""
