"""Tutorial step 8: routing with include() and named groups."""
