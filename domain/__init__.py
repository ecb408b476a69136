"""GPU Proxy domain: aggregates, rules and use cases.

Dependency rule: this package imports only the standard library and the
``eventsourcing`` domain/application API. It never imports ``infrastructure``
or ``interfaces`` (``tests/unit/test_architecture.py`` enforces it).
"""
