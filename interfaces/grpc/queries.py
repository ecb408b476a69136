"""Read-model queries the gRPC API needs beyond ``LedgerQueries`` (reporting only)."""

from __future__ import annotations

from domain.credits import account_id_for
from infrastructure.ledger_queries import Transaction
from infrastructure.sql import Database, Row

COLUMNS = "position, kind, amount, hold_id, reason, reference, actor, at"


def _row(r: Row) -> Transaction:
    return Transaction(
        int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), int(r[7])
    )


def transaction_count(db: Database, user_id: str) -> int:
    with db.read() as tx:
        row = tx.fetchone(
            "SELECT COUNT(*) FROM transactions WHERE account_id = ?",
            (str(account_id_for(user_id)),),
        )
    return int(row[0]) if row else 0


def last_position(db: Database, user_id: str) -> int:
    with db.read() as tx:
        row = tx.fetchone(
            "SELECT COALESCE(MAX(position), 0) FROM transactions WHERE account_id = ?",
            (str(account_id_for(user_id)),),
        )
    return int(row[0]) if row else 0


def transactions_after(db: Database, user_id: str, after: int, limit: int) -> list[Transaction]:
    """The user's money movements with a position above ``after``, oldest first."""
    with db.read() as tx:
        rows = tx.fetchall(
            f"SELECT {COLUMNS} FROM transactions WHERE account_id = ? AND position > ? "
            "ORDER BY position LIMIT ?",
            (str(account_id_for(user_id)), after, limit),
        )
    return [_row(r) for r in rows]


def rental_ids(db: Database, user_id: str, limit: int = 200) -> list[str]:
    """The user's instances, newest first (as ``GET /api/v1/gpu/rentals``)."""
    with db.read() as tx:
        rows = tx.fetchall(
            "SELECT instance_id FROM instances WHERE owner = ? ORDER BY requested_at DESC LIMIT ?",
            (user_id, limit),
        )
    return [str(r[0]) for r in rows]
