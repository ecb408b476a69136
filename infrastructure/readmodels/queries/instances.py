"""Read-side queries over the ``instances`` and ``proxy_load`` read models (reporting only).

Every door (REST, gRPC, agents/MCP, the admin dashboard) lists instances and their load
through this one object, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from infrastructure.db.sql import Database

RENTALS_LIMIT = 200


@dataclass(frozen=True)
class InstanceTraffic:
    """One running (or stopping) instance of an owner and its ``proxy_load`` totals."""

    instance_id: str
    provider: str
    gpu_model: str
    state: str
    requests: int
    errors: int
    latency_ms_sum: int


@dataclass(frozen=True)
class RunningInstance:
    """An owner's running instance with an endpoint: where the proxy may send requests."""

    instance_id: str
    provider: str
    host: str
    port: int
    vram_gb: float
    num_gpus: int
    price_per_hour: int


@dataclass(frozen=True)
class OwnedInstanceId:
    instance_id: str
    owner: str
    owner_email: str | None


@dataclass(frozen=True)
class LoadTableRow:
    """One line of the admin load table: an instance's traffic and who owns it."""

    instance_id: str
    owner: str
    owner_email: str | None
    provider: str
    state: str | None
    requests: int
    errors: int
    latency_ms_sum: int
    last_at: int


class InstanceQueries:
    """Instances by owner, their traffic, and every user's instances (admin)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def ids_for(self, owner: str, limit: int = RENTALS_LIMIT) -> list[str]:
        """The owner's instance ids, newest first (``GET /api/v1/gpu/rentals``)."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT instance_id FROM instances WHERE owner = ? "
                "ORDER BY requested_at DESC LIMIT ?",
                (owner, limit),
            )
        return [str(r[0]) for r in rows]

    def ids_in_states(self, *states: str) -> list[str]:
        """Every instance in one of ``states`` (the marketplace jobs' rounds)."""
        marks = ", ".join("?" for _ in states)
        with self.db.read() as tx:
            rows = tx.fetchall(
                f"SELECT instance_id FROM instances WHERE state IN ({marks})", states
            )
        return [str(r[0]) for r in rows]

    def running_for(self, owner: str) -> list[RunningInstance]:
        """The owner's running instances that have an endpoint, oldest first (the proxy)."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT instance_id, provider, host, port, vram_gb, num_gpus, price_per_hour "
                "FROM instances WHERE owner = ? AND state = 'running' AND host <> '' "
                "ORDER BY requested_at, instance_id",
                (owner,),
            )
        return [
            RunningInstance(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                int(r[3]),
                float(r[4] or 0),
                int(r[5] or 1),
                int(r[6]),
            )
            for r in rows
        ]

    def traffic_for(self, owner: str) -> list[InstanceTraffic]:
        """The owner's running and stopping instances with their traffic, oldest first."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT i.instance_id, i.provider, i.gpu_model, i.state, "
                "COALESCE(l.requests, 0), COALESCE(l.errors, 0), COALESCE(l.latency_ms_sum, 0) "
                "FROM instances i LEFT JOIN proxy_load l ON l.instance_id = i.instance_id "
                "WHERE i.owner = ? AND i.state IN ('running', 'stopping') "
                "ORDER BY i.requested_at",
                (owner,),
            )
        return [
            InstanceTraffic(str(i), str(p), str(m), str(s), int(r), int(e), int(lat))
            for i, p, m, s, r, e, lat in rows
        ]

    def everyone(self, state: str | None, limit: int) -> list[OwnedInstanceId]:
        """Every user's instances (optionally in one state), newest first."""
        where, params = ("WHERE i.state = ?", [state]) if state else ("", [])
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT i.instance_id, i.owner, u.email FROM instances i "
                f"LEFT JOIN users u ON u.id = i.owner {where} "
                "ORDER BY i.requested_at DESC LIMIT ?",
                (*params, limit),
            )
        return [OwnedInstanceId(str(i), str(o), None if e is None else str(e)) for i, o, e in rows]

    def load_table(self, limit: int = 500) -> list[LoadTableRow]:
        """Every instance's traffic, busiest first (admin)."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT l.instance_id, l.owner, u.email, l.provider, i.state, l.requests, "
                "l.errors, l.latency_ms_sum, l.last_at FROM proxy_load l "
                "LEFT JOIN instances i ON i.instance_id = l.instance_id "
                "LEFT JOIN users u ON u.id = l.owner ORDER BY l.requests DESC LIMIT ?",
                (limit,),
            )
        return [
            LoadTableRow(
                str(iid),
                str(owner),
                None if email is None else str(email),
                str(provider),
                None if state is None else str(state),
                int(requests),
                int(errors),
                int(latency),
                int(last_at),
            )
            for iid, owner, email, provider, state, requests, errors, latency, last_at in rows
        ]

    def counts_by_provider(self) -> dict[str, dict[str, int]]:
        """Instance counts per provider and state."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT provider, state, COUNT(*) FROM instances GROUP BY provider, state"
            )
        counts: dict[str, dict[str, int]] = {}
        for provider, state, count in rows:
            counts.setdefault(str(provider), {})[str(state)] = int(count)
        return counts
