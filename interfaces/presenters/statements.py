"""A monthly statement as the API and the admin CLI show it (USD strings)."""

from __future__ import annotations

from msgspec import Struct

from domain.money import micros_to_usd
from domain.statements import Statement


class MonthlyStatement(Struct):
    """The month's movements; ``reconciles``: opening + movements = closing. The hashes chain
    the month's ledger records (docs/statements.md)."""

    user_id: str
    month: str
    currency: str
    opening_balance: str
    payments: str
    grants: str
    charges: str
    charges_by_instance: dict[str, str]
    refunds: str
    adjustments: str
    closing_balance: str
    reconciles: bool
    opening_hash: str
    closing_hash: str


def present_statement(user_id: str, result: Statement) -> MonthlyStatement:
    return MonthlyStatement(
        user_id=user_id,
        month=result.month,
        currency="USD",
        opening_balance=micros_to_usd(result.opening),
        payments=micros_to_usd(result.payments),
        grants=micros_to_usd(result.grants),
        charges=micros_to_usd(result.charges),
        charges_by_instance={k: micros_to_usd(v) for k, v in result.charges_by_reference.items()},
        refunds=micros_to_usd(result.refunds),
        adjustments=micros_to_usd(result.adjustments),
        closing_balance=micros_to_usd(result.closing),
        reconciles=result.reconciles,
        opening_hash=result.opening_hash,
        closing_hash=result.closing_hash,
    )
