"""Electing one process among replicas for a singleton job (PostgreSQL advisory locks).

A ``PgElection`` keeps one connection of its own holding a session-level advisory lock:
the process holding it leads until it closes or dies, when PostgreSQL frees the lock and the
next process to ask leads. On SQLite (the embedded default, one process) every process leads.
The connection goes to PostgreSQL itself (``Settings.direct_conninfo``), never through
PgBouncer in transaction mode, where a session lock would stay on a pooled server connection
(docs/adr/0021-pgbouncer-and-elections.md). TCP keepalives make a holder whose network
vanished notice (and PostgreSQL free its lock) within about half a minute.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

log = logging.getLogger(__name__)

HOLD_SWEEP_LOCK_KEY = 7_420_010
MARKETPLACE_JOBS_LOCK_KEY = 7_420_011  # instance refresh, stops, metering, reconciliation
PAYMENT_JOBS_LOCK_KEY = 7_420_012  # payment reconciliation, auto-renew, chain scan


class Election(Protocol):
    def leading(self) -> bool:
        """True while this process leads (taking the lead if it is free)."""
        ...

    def close(self) -> None: ...


class SoleProcess:
    """The embedded default: one process, always the leader."""

    def leading(self) -> bool:
        return True

    def close(self) -> None:
        return None


class PgElection:
    """Leads while its own connection holds ``pg_advisory_lock(key)``."""

    def __init__(self, conninfo: str, key: int) -> None:
        self.conninfo = conninfo
        self.key = key
        self._conn: Any = None
        self._held = False
        # Jobs of one election ask from several threads at once: without this two of them
        # could each open a connection, and the one dropped would keep the lock for good.
        self._lock = threading.Lock()

    def leading(self) -> bool:
        with self._lock:
            return self._leading()

    def _leading(self) -> bool:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
                self._held = False
            if self._held:
                self._conn.execute("SELECT 1")  # the session (and its lock) is still there
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            self._held = bool(row and row[0])
            if self._held:
                log.info("elected for advisory lock %d", self.key)
            return self._held
        except psycopg.Error as exc:
            log.warning("election for lock %d: %s; not leading", self.key, exc)
            self.close()
            return False

    def close(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to free
                log.debug("closing the election connection failed", exc_info=True)
