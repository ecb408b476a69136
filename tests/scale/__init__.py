"""Scale test: replicas behind nginx on one PostgreSQL (via PgBouncer) and one Redis, under a
mixed load while parts fail. Run with ``make scale-test`` or ``python -m tests.scale.run``;
results and method in docs/scale-results.md."""
