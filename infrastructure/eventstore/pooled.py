"""The event store's PostgreSQL factory for a transaction pooler (PgBouncer, ``DB_POOLER``).

The library's recorders prepare their statements on the server (``prepare=True``) and its pool
runs ``SET idle_in_transaction_session_timeout`` on each new connection. Behind PgBouncer in
transaction mode each transaction may run on another server connection, so a prepared
statement is missing there or clashes with one of another client (``prepared statement
"_pg3_0" already exists``), and a session ``SET`` stays on a server connection other clients
then use. This factory turns both off before the pool opens: ``prepare_threshold=None`` (psycopg
then never prepares, whatever ``prepare=`` says) and a connection set-up that only switches
autocommit on. Everything else the library does is transaction-scoped (``SET LOCAL``,
``LOCK TABLE``, ``NOTIFY`` inside the write transaction) and works through the pooler.
"""

from __future__ import annotations

from typing import Any

import eventsourcing.postgres as es_postgres
from eventsourcing.utils import Environment, EnvType


def _autocommit_only(conn: Any) -> None:
    conn.autocommit = True


class PooledPostgresFactory(es_postgres.PostgresFactory):
    """``PostgresFactory`` whose connections keep no session state (see the module docstring)."""

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        pool = self.datastore.pool
        if not isinstance(pool.kwargs, dict) or not hasattr(pool, "_configure"):
            raise TypeError("eventsourcing's connection pool changed: review pg_eventstore")
        pool.kwargs["prepare_threshold"] = None
        pool._configure = _autocommit_only  # replaces the session-level SET


FACTORY_TOPIC = f"{__name__}:{PooledPostgresFactory.__name__}"
