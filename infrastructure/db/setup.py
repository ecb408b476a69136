"""Opening the stores: create the database, start the event store, probe that it answers."""

from __future__ import annotations

from dataclasses import replace

from domain.services.ledger import LedgerApp
from infrastructure.db.sql import Database
from infrastructure.eventstore.factory import eventstore_env
from infrastructure.settings import Settings

EVENTSTORE_LOCK_KEY = 7_420_002  # serialises event-store start-up on PostgreSQL


def ensure_database(settings: Settings) -> bool:
    """Create the PostgreSQL database if it does not exist yet; True if it was created."""
    if settings.db.type != "postgres":
        return False
    import psycopg
    from psycopg import sql

    try:
        psycopg.connect(settings.db.postgres_conninfo, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
        # a direct connection to "postgres": a pooler may not list it
        admin_settings = replace(settings, db=replace(settings.db, name="postgres"))
        with psycopg.connect(admin_settings.db.direct_conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.db.name)))
        return True
    return False


def open_ledger_app(settings: Settings) -> LedgerApp:
    """The event-sourced ledger application over the configured event store.

    On PostgreSQL the library runs CREATE ... IF NOT EXISTS and CREATE OR REPLACE FUNCTION on
    every start; concurrent starts collide ("tuple concurrently updated"): they are serialised
    by an advisory lock, held in a transaction on a direct connection (through PgBouncer it
    would hold one of the pooler's server connections while the library waits for another).
    """
    if settings.db.type != "postgres":
        return LedgerApp(env=eventstore_env(settings))
    import psycopg

    with psycopg.connect(settings.db.direct_conninfo, connect_timeout=10) as lock:
        lock.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTSTORE_LOCK_KEY,))
        return LedgerApp(env=eventstore_env(settings))


def database_answers(db: Database) -> None:
    """Raise unless the database answers a trivial query now (readiness probes)."""
    with db.snapshot() as tx:
        tx.fetchone("SELECT 1")
