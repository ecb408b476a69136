"""Read-side queries over the ledger's projections (reporting only; never money decisions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from domain import guardrails
from domain.credits import account_id_for
from infrastructure.db.sql import Database, Row

BALANCE_COLUMNS = (
    "balance",
    "held",
    "total_granted",
    "total_charged",
    "total_debited",
    "cap",
    "auto_renew_enabled",
    "auto_renew_threshold",
    "auto_renew_amount",
    "version",
)


TRANSACTION_COLUMNS = "position, kind, amount, hold_id, reason, reference, actor, at"
BALANCE_DELTA = (
    "CASE kind WHEN 'grant' THEN amount WHEN 'charge' THEN -amount "
    "WHEN 'capture' THEN -amount WHEN 'debit' THEN -amount ELSE 0 END"
)
BALANCE_SQL = f"SELECT {', '.join(BALANCE_COLUMNS)} FROM balances WHERE account_id = ?"


@lru_cache(maxsize=65_536)
def account_key(user_id: str) -> str:
    """The account id as the read-model tables store it (text)."""
    return str(account_id_for(user_id))


@dataclass(frozen=True)
class Transaction:
    position: int
    kind: str
    amount: int
    hold_id: str
    reason: str
    reference: str
    actor: str
    at_micros: int


def _transaction(r: Row) -> Transaction:
    return Transaction(
        int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), int(r[7])
    )


@dataclass(frozen=True)
class BalancePoint:
    position: int
    at_micros: int
    balance: int


@dataclass(frozen=True)
class UsageDay:
    day: str
    spent: int
    spend_count: int
    granted: int
    debited: int


class LedgerQueries:
    """Balances, history, spending windows and usage from the read models."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def balance(self, user_id: str) -> dict[str, Any] | None:
        with self.db.read() as tx:
            row = tx.fetchone(BALANCE_SQL, (account_key(user_id),))
        if row is None:
            return None
        keys = BALANCE_COLUMNS
        return dict(zip(keys, (int(v) for v in row), strict=True))

    def transactions(
        self, user_id: str, *, limit: int = 50, before: int | None = None
    ) -> list[Transaction]:
        """Newest first; page with ``before`` = the smallest position already seen."""
        params: list[Any] = [str(account_id_for(user_id))]
        where = "account_id = ?"
        if before is not None:
            where += " AND position < ?"
            params.append(before)
        params.append(limit)
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT position, kind, amount, hold_id, reason, reference, actor, at "
                f"FROM transactions WHERE {where} ORDER BY position DESC LIMIT ?",
                params,
            )
        return [
            Transaction(
                int(r[0]),
                str(r[1]),
                int(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                str(r[6]),
                int(r[7]),
            )
            for r in rows
        ]

    def transaction_count(self, user_id: str) -> int:
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT COUNT(*) FROM transactions WHERE account_id = ?", (account_key(user_id),)
            )
        return int(row[0]) if row else 0

    def last_position(self, user_id: str) -> int:
        """The position of the user's newest money movement (0: none yet)."""
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT COALESCE(MAX(position), 0) FROM transactions WHERE account_id = ?",
                (account_key(user_id),),
            )
        return int(row[0]) if row else 0

    def transactions_after(self, user_id: str, after: int, limit: int) -> list[Transaction]:
        """The user's money movements with a position above ``after``, oldest first."""
        with self.db.read() as tx:
            rows = tx.fetchall(
                f"SELECT {TRANSACTION_COLUMNS} FROM transactions "
                "WHERE account_id = ? AND position > ? ORDER BY position LIMIT ?",
                (account_key(user_id), after, limit),
            )
        return [_transaction(r) for r in rows]

    def balance_history(self, user_id: str, limit: int) -> list[BalancePoint]:
        """The balance after each of the user's last ``limit`` movements, oldest first."""
        with self.db.snapshot() as tx:
            rows = tx.fetchall(
                "SELECT position, at, balance FROM ("
                f"SELECT position, at, kind, SUM({BALANCE_DELTA}) OVER (ORDER BY position) "
                "AS balance FROM transactions WHERE account_id = ?) t "
                "WHERE kind IN ('grant', 'charge', 'capture', 'debit') "
                "ORDER BY position DESC LIMIT ?",
                (account_key(user_id), limit),
            )
        return [BalancePoint(int(p), int(at), int(b)) for p, at, b in reversed(rows)]

    def usage(
        self, user_id: str, since: str | None = None, until: str | None = None
    ) -> list[UsageDay]:
        params: list[Any] = [str(account_id_for(user_id))]
        where = "account_id = ?"
        if since:
            where += " AND day >= ?"
            params.append(since)
        if until:
            where += " AND day <= ?"
            params.append(until)
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT day, spent, spend_count, granted, debited FROM usage_daily "
                f"WHERE {where} ORDER BY day",
                params,
            )
        return [UsageDay(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    def window_spend(self, user_id: str, now: datetime) -> dict[str, int]:
        """Spend per guard-rail window at ``now`` as the spending projection sees it."""
        account = str(account_id_for(user_id))
        now_minute = guardrails.minute_of(now)
        with self.db.snapshot() as tx:
            buckets = tx.fetchall(
                "SELECT minute, amount FROM spending_buckets WHERE account_id = ? AND minute > ? "
                "AND minute <= ? ORDER BY minute",
                (account, now_minute - guardrails.LONGEST_WINDOW_MINUTES, now_minute),
            )
            resets = tx.fetchall(
                "SELECT window_name, minute, amount FROM spending_resets WHERE account_id = ?",
                (account,),
            )
        return guardrails.window_spend(
            [[int(m), int(a)] for m, a in buckets],
            now_minute,
            {str(w): [int(m), int(a)] for w, m, a in resets},
        )

    def totals(self) -> dict[str, int]:
        with self.db.snapshot() as tx:
            row = tx.fetchone(
                "SELECT COUNT(*), COALESCE(SUM(balance), 0), COALESCE(SUM(held), 0), "
                "COALESCE(SUM(total_granted), 0), COALESCE(SUM(total_charged), 0) FROM balances"
            )
            tx_row = tx.fetchone("SELECT COUNT(*) FROM transactions")
        values = [int(v) for v in row] if row else [0] * 5
        return {
            "accounts": values[0],
            "balance": values[1],
            "held": values[2],
            "granted": values[3],
            "charged": values[4],
            "transactions": int(tx_row[0]) if tx_row else 0,
        }
