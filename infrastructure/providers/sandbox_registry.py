"""The shared registry of sandbox instances: every replica answers for every sandbox instance.

A sandbox instance is a server inside the process that rented it (its *owner*). The owner
writes one ``sandbox_instances`` row per instance (advertised host and port, state) and keeps
its rows' ``heartbeat_at`` fresh; other replicas read the rows. All times come from the
database's clock (``clock_timestamp()`` on PostgreSQL), so staleness never depends on one
process's wall clock. A row whose heartbeat is older than ``timeout`` seconds reads as gone
(the owner was killed), as a real market reports a dead machine. A destroy asked for on a
replica that does not own the instance sets ``destroy_requested``; the owner stops the server
at its next heartbeat and marks the row ``terminated``. docs/adr/0028.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from infrastructure.db.sql import Database, Row

_NOW = {
    "postgres": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_COLUMNS = (
    "instance_id, owner, label, offer_id, price_per_hour, host, port, state, raw_state, "
    "started_at, destroy_requested, terminated"
)


@dataclass(frozen=True)
class SandboxRow:
    """One registered instance as a reader sees it (``stale``: its owner stopped beating)."""

    instance_id: str
    owner: str
    label: str
    offer_id: str
    price_per_hour: int
    host: str
    port: int
    state: str
    raw_state: str
    started_at: float | None
    destroy_requested: bool
    terminated: bool
    stale: bool

    @property
    def gone(self) -> bool:
        """Destroyed, asked to be, or its owner is dead: reads as terminated."""
        return self.terminated or self.destroy_requested or self.stale


def new_owner_id() -> str:
    """An id for one provider object: host name, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SandboxRegistry:
    """Rows of ``sandbox_instances`` for one owner (writes) and for everyone (reads)."""

    def __init__(self, db: Database, *, timeout: float = 15.0, owner: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.db = db
        self.timeout = timeout
        self.owner = owner or new_owner_id()
        self._now = _NOW[db.dialect]

    def add(
        self,
        *,
        instance_id: str,
        label: str,
        offer_id: str,
        price_per_hour: int,
        host: str,
        port: int,
        state: str,
        raw_state: str,
        started_at: float | None,
    ) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO sandbox_instances (instance_id, owner, label, offer_id, "
                "price_per_hour, host, port, state, raw_state, started_at, created_at, "
                f"heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {self._now}, {self._now})",
                (
                    instance_id,
                    self.owner,
                    label,
                    offer_id,
                    price_per_hour,
                    host,
                    port,
                    state,
                    raw_state,
                    started_at,
                ),
            )

    def publish(
        self, instance_id: str, state: str, raw_state: str, started_at: float | None
    ) -> None:
        """The owner's current view of one of its instances."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE sandbox_instances SET state = ?, raw_state = ?, started_at = ? "
                "WHERE instance_id = ? AND owner = ? AND terminated = 0",
                (state, raw_state, started_at, instance_id, self.owner),
            )

    def _row(self, r: Row) -> SandboxRow:
        return SandboxRow(
            instance_id=str(r[0]),
            owner=str(r[1]),
            label=str(r[2]),
            offer_id=str(r[3]),
            price_per_hour=int(r[4]),
            host=str(r[5]),
            port=int(r[6]),
            state=str(r[7]),
            raw_state=str(r[8]),
            started_at=None if r[9] is None else float(r[9]),
            destroy_requested=bool(r[10]),
            terminated=bool(r[11]),
            stale=bool(r[12]),
        )

    def _select(self) -> str:
        return (
            f"SELECT {_COLUMNS}, CASE WHEN heartbeat_at < {self._now} - ? THEN 1 ELSE 0 END "
            "FROM sandbox_instances"
        )

    def get(self, instance_id: str) -> SandboxRow | None:
        with self.db.read() as tx:
            r = tx.fetchone(f"{self._select()} WHERE instance_id = ?", (self.timeout, instance_id))
        return None if r is None else self._row(r)

    def live(self) -> list[SandboxRow]:
        """Every instance that is neither destroyed, nor asked to be, nor orphaned by its owner."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                f"{self._select()} WHERE terminated = 0 AND destroy_requested = 0 "
                f"AND heartbeat_at >= {self._now} - ? ORDER BY instance_id",
                (self.timeout, self.timeout),
            )
        return [self._row(r) for r in rows]

    def request_destroy(self, instance_id: str) -> bool:
        """Ask the owner to destroy it; False when there is no such live row."""
        with self.db.transaction() as tx:
            changed = tx.execute(
                "UPDATE sandbox_instances SET destroy_requested = 1 "
                "WHERE instance_id = ? AND terminated = 0",
                (instance_id,),
            )
        return bool(changed)

    def mark_terminated(self, instance_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE sandbox_instances SET terminated = 1, state = 'terminated', "
                "raw_state = 'destroyed' WHERE instance_id = ?",
                (instance_id,),
            )

    def beat(self) -> list[str]:
        """Refresh this owner's live rows; return those another replica asked to destroy."""
        with self.db.transaction() as tx:
            tx.execute(
                f"UPDATE sandbox_instances SET heartbeat_at = {self._now} "
                "WHERE owner = ? AND terminated = 0",
                (self.owner,),
            )
            rows = tx.fetchall(
                "SELECT instance_id FROM sandbox_instances "
                "WHERE owner = ? AND terminated = 0 AND destroy_requested = 1",
                (self.owner,),
            )
        return [str(r[0]) for r in rows]
