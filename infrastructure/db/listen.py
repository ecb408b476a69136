"""Wakes projection runners on PostgreSQL ``NOTIFY`` from other processes' saves.

NOTIFY is only a wake-up (data always comes from the table); if the connection drops the
listener reconnects, and the runner's watchdog poll covers the gap meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


class PgWakeup:
    def __init__(self, conninfo: str, channel: str, callback: Callable[[], None]) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.conninfo, autocommit=True, keepalives=1, keepalives_idle=30
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.callback()
            except psycopg.Error:
                log.warning("LISTEN connection lost; reconnecting", exc_info=True)
                self._stop.wait(1.0)
