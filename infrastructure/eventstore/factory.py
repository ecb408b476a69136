"""Builds the ledger's event store from settings (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

from infrastructure.eventstore.pooled import FACTORY_TOPIC
from infrastructure.settings import Settings

_RECORDERS = "infrastructure.eventstore.idempotency"  # the recorders with the key table


def eventstore_env(settings: Settings) -> dict[str, str]:
    """The ``eventsourcing`` environment for the configured database.

    ``POSTGRES_ENABLE_DB_FUNCTIONS`` stays off: its insert function lets a later notification
    id commit before an earlier one, so a tailing projection could skip events for good.
    The recorders also write the idempotency key table (``infrastructure.eventstore.idempotency``).
    """
    if settings.db.type == "sqlite":
        settings.db.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(settings.db.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": "y",
            "APPLICATION_RECORDER_TOPIC": f"{_RECORDERS}:SQLiteLedgerRecorder",
        }
    return {
        # Behind PgBouncer (transaction mode): no prepared statements, no session SET.
        "PERSISTENCE_MODULE": FACTORY_TOPIC
        if settings.db.transaction_pooler
        else "eventsourcing.postgres",
        "POSTGRES_DBNAME": settings.db.name,
        "POSTGRES_HOST": settings.db.host,
        "POSTGRES_PORT": str(settings.db.port),
        "POSTGRES_USER": settings.db.user,
        "POSTGRES_PASSWORD": settings.db.password,
        "POSTGRES_POOL_SIZE": "2",
        "POSTGRES_MAX_OVERFLOW": str(max(2, settings.db.max_conns // 2)),
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "10",
        # No ping per pool checkout (a round trip per save); the library's recorder retries
        # on OperationalError/InterfaceError, which covers connections the server dropped.
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        "CREATE_TABLE": "y",
        "APPLICATION_RECORDER_TOPIC": f"{_RECORDERS}:PostgresLedgerRecorder",
    }


def events_channel(app_name: str) -> str:
    """The PostgreSQL NOTIFY channel the library signals on each save."""
    return f"{app_name.lower()}_events"
