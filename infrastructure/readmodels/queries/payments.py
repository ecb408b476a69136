"""Reads of the payments read model: listings, look-ups by processor id, work for the jobs.

These rows only find payments; every decision is taken on the Payment aggregate itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from infrastructure.db.sql import Database

COLUMNS = (
    "payment_id, owner, idem_key, amount, currency, processor, method, source, state, "
    "external_id, wallet, failure, credited, refunded, disputed, received, flags, "
    "created_at, updated_at, expires_at"
)


@dataclass(frozen=True)
class PaymentRow:
    payment_id: str
    owner: str
    idem_key: str
    amount: int
    currency: str
    processor: str
    method: str
    source: str
    state: str
    external_id: str
    wallet: str
    failure: str
    credited: int
    refunded: int
    disputed: int
    received: int
    flags: str
    created_at: int
    updated_at: int
    expires_at: int


@dataclass(frozen=True)
class CryptoTransfer:
    """A token transfer the scanner saw, and what it did with it (``kind``)."""

    ref: str  # tx hash:log index
    network: str
    sender: str
    amount: int
    block: int
    payment_id: str  # "" when credited to no payment
    kind: str  # claimed/exact/under/over/late/extra/duplicate, or ambiguous/unmatched
    seen_at: int


@dataclass(frozen=True)
class AutoRenewDue:
    account_id: str
    version: int
    user_id: str
    amount: int
    payment_method: str


class PaymentQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _rows(self, where: str, params: tuple[Any, ...], tail: str = "") -> list[PaymentRow]:
        sql = f"SELECT {COLUMNS} FROM payments WHERE {where} {tail}"
        with self.db.read() as tx:
            return [PaymentRow(*row) for row in tx.fetchall(sql, params)]

    def for_user(
        self, owner: str, *, limit: int = 50, before: int | None = None
    ) -> list[PaymentRow]:
        if before is None:
            return self._rows("owner = ?", (owner,), f"ORDER BY created_at DESC LIMIT {limit:d}")
        return self._rows(
            "owner = ? AND created_at < ?",
            (owner, before),
            f"ORDER BY created_at DESC LIMIT {limit:d}",
        )

    def everyone(self, state: str | None, limit: int) -> list[tuple[PaymentRow, str | None]]:
        """Every user's payments (optionally in one state), newest first, with the owner's
        email (admin)."""
        where, params = ("WHERE p.state = ?", [state]) if state else ("", [])
        columns = ", ".join(f"p.{name.strip()}" for name in COLUMNS.split(","))
        with self.db.read() as tx:
            rows = tx.fetchall(
                f"SELECT {columns}, u.email FROM payments p LEFT JOIN users u ON u.id = p.owner "
                f"{where} ORDER BY p.created_at DESC LIMIT ?",
                (*params, limit),
            )
        return [(PaymentRow(*row[:-1]), row[-1]) for row in rows]

    def by_external_id(self, external_id: str) -> UUID | None:
        rows = self._rows("external_id = ?", (external_id,), "LIMIT 1")
        return UUID(rows[0].payment_id) if rows else None

    def open_payments(self, *, older_than: int, limit: int = 200) -> list[PaymentRow]:
        """Payments still initiated or pending, last touched before ``older_than`` (µs)."""
        return self._rows(
            "state IN ('initiated', 'pending') AND updated_at < ?",
            (older_than,),
            f"ORDER BY updated_at LIMIT {limit:d}",
        )

    def crypto_transfers(
        self, *, unclaimed: bool = False, limit: int = 200
    ) -> list[CryptoTransfer]:
        """Transfers the scanner saw, newest first; ``unclaimed``: those credited to no one."""
        where = "WHERE kind IN ('ambiguous', 'unmatched')" if unclaimed else ""
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT ref, network, sender, amount, block, payment_id, kind, seen_at "
                f"FROM crypto_transfers {where} ORDER BY seen_at DESC, ref LIMIT ?",
                (limit,),
            )
        return [
            CryptoTransfer(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                int(r[3]),
                int(r[4]),
                str(r[5]),
                str(r[6]),
                int(r[7]),
            )
            for r in rows
        ]

    def auto_renew_due(self, *, since: int, limit: int = 100) -> list[AutoRenewDue]:
        """Auto-renew triggers since ``since`` (µs) that have no payment yet."""
        sql = (
            "SELECT r.account_id, r.version, b.user_id, r.amount, r.payment_method "
            "FROM auto_renew_requests r JOIN balances b ON b.account_id = r.account_id "
            "LEFT JOIN payments p ON p.owner = b.user_id "
            "AND p.idem_key = 'auto-renew:' || r.account_id || ':' || r.version "
            f"WHERE r.at >= ? AND p.payment_id IS NULL ORDER BY r.at LIMIT {limit:d}"
        )
        with self.db.read() as tx:
            return [AutoRenewDue(*row) for row in tx.fetchall(sql, (since,))]
