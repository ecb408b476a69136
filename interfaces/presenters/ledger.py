"""Money movements and daily usage (``/api/v1/billing/transactions``, ``/api/v1/usage``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from msgspec import Struct

from domain.money import micros_to_usd
from infrastructure.readmodels.queries.ledger import Transaction, UsageDay
from interfaces.presenters.payments import PaymentRow


class TransactionRow(Struct):
    """One ledger movement; ``id`` is its position, the ``before`` cursor of the next page."""

    id: int
    type: str
    amount: str
    hold_id: str | None
    reason: str
    reference: str
    created_at: str


class TransactionsPage(Struct):
    """Newest first; ``payments`` (first page only) lists payments in every state."""

    payments: list[PaymentRow]
    transactions: list[TransactionRow]
    next_before: int | None


class Day(Struct):
    day: str
    spent: str
    requests: int
    granted: str
    debited: str


class Usage(Struct):
    days: list[Day]


def present_transaction(row: Transaction) -> TransactionRow:
    return TransactionRow(
        id=row.position,
        type=row.kind,
        amount=micros_to_usd(row.amount),
        hold_id=row.hold_id or None,
        reason=row.reason,
        reference=row.reference,
        created_at=datetime.fromtimestamp(row.at_micros / 1_000_000, UTC).isoformat(),
    )


def present_transactions(
    rows: Sequence[Transaction], payments: list[PaymentRow], limit: int
) -> TransactionsPage:
    return TransactionsPage(
        payments=payments,
        transactions=[present_transaction(r) for r in rows],
        next_before=rows[-1].position if len(rows) == limit else None,
    )


def present_usage(days: Sequence[UsageDay]) -> Usage:
    return Usage(
        days=[
            Day(
                day=d.day,
                spent=micros_to_usd(d.spent),
                requests=d.spend_count,
                granted=micros_to_usd(d.granted),
                debited=micros_to_usd(d.debited),
            )
            for d in days
        ]
    )
