"""Which failures mean "a backing store is briefly unreachable" (answered 503 + Retry-After).

PostgreSQL or PgBouncer restarting, a pool with no connection to lend, Redis restarting: the
request did nothing (its transaction never committed) and the same request a moment later
works, so the client is told to retry, never given a 500.
"""

from __future__ import annotations

RETRY_AFTER_SECONDS = 1


def _unavailable_types() -> tuple[type[BaseException], ...]:
    import psycopg
    from eventsourcing.persistence import InterfaceError, OperationalError

    found: list[type[BaseException]] = [
        psycopg.OperationalError,  # connection lost, admin shutdown, pool timeout
        psycopg.InterfaceError,  # the connection was already closed
        OperationalError,  # eventsourcing's wrappers of the same
        InterfaceError,
    ]
    try:
        import redis.exceptions

        found += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(found)


def store_unavailable(exc: BaseException) -> bool:
    """True if ``exc``, or an exception it was raised from, is a store being unreachable."""
    types = _unavailable_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
