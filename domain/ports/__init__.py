"""Ports: the small interfaces the domain needs from the outside world (clock, payments, the
proxy fee tally)."""
