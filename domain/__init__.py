"""GPU Proxy domain: aggregates, rules and use cases.

Dependency rule: this package imports only the standard library and the
``eventsourcing`` library (aggregates, applications, and its persistence errors for
optimistic concurrency). It never imports ``infrastructure`` or ``interfaces``
(``tests/unit/test_architecture.py`` enforces it).
"""
