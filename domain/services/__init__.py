"""Application services: thin use cases over the aggregates (get, call, save)."""
