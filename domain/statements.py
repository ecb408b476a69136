"""Monthly statements, folded from an account's events (never from a read model).

Balance moves only on grants (+), charges and hold captures (-) and debits (-); holds and
releases change what is available, not the balance. The statement checks its own sum:
opening + payments + other grants - charges - refunds/disputes/adjustments = closing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from domain.errors import InvalidArgumentError


class AccountEvent(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def at(self) -> datetime: ...

    @property
    def data(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StatementItem:
    """One balance move of the month; ``amount`` is positive, ``balance`` is after it."""

    at: datetime
    bucket: str  # payments, grants, charges, refunds or adjustments
    kind: str  # the reason recorded with the event ("GPU time", "stripe payment", ...)
    reference: str  # instance, payment or hold the move belongs to
    amount: int
    balance: int


@dataclass
class Statement:
    month: str
    opening: int = 0
    payments: int = 0
    grants: int = 0  # admin, promotion, auto-renew grants that were not payments
    charges: int = 0
    charges_by_reference: dict[str, int] = field(default_factory=dict)
    refunds: int = 0  # refunds and disputes
    adjustments: int = 0
    closing: int = 0
    charges_by_kind: dict[str, int] = field(default_factory=dict)  # by reason: "GPU time", ...
    items: list[StatementItem] = field(default_factory=list)  # every balance move, in order
    # SHA-256 hash chain over the account's events (docs/events.md): the previous month's
    # closing hash and this month's; empty until ``domain.statement_chain`` fills them.
    opening_hash: str = ""
    closing_hash: str = ""

    @property
    def reconciles(self) -> bool:
        total = self.opening + self.payments + self.grants
        return total - self.charges - self.refunds - self.adjustments == self.closing

    def spend_by_day(self) -> dict[str, dict[str, int]]:
        """Charges per UTC day ('YYYY-MM-DD') and kind, from the month's items."""
        days: dict[str, dict[str, int]] = {}
        for item in self.items:
            if item.bucket == "charges":
                day = days.setdefault(item.at.date().isoformat(), {})
                day[item.kind] = day.get(item.kind, 0) + item.amount
        return days


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """'2026-11' → [2026-11-01, 2026-12-01) in UTC."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise InvalidArgumentError("month must be YYYY-MM", field="month")
    year, number = int(month[:4]), int(month[5:])
    try:  # year 0 and 9999-12 (which ends in year 10000) are past what datetime holds
        start = datetime(year, number, 1, tzinfo=UTC)
        end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    except ValueError:
        raise InvalidArgumentError("month must be from 0001-01 to 9999-11", field="month") from None
    return start, end


def hold_placed(data: Mapping[str, Any]) -> tuple[str, str]:
    """What a ``HoldPlaced`` event tells a statement: (reference, reason) of its captures."""
    return data.get("reference") or data.get("reason") or "", data.get("reason") or ""


def statement(
    month: str,
    events: Iterable[AccountEvent],
    *,
    balance: int = 0,
    placed: Mapping[str, tuple[str, str]] | None = None,
) -> Statement:
    """Fold the events of one account (oldest first) into the statement for ``month``.

    Given every event, from the first. Or given only those from some point on, with
    ``balance`` the balance before them and ``placed`` (hold id -> (reference, reason)) the
    holds placed before them that may still be captured: the same statement (a month's
    statement reads from the month's start, docs/adr/0033).
    """
    start, end = month_bounds(month)
    result = Statement(month=month)
    opened = False
    references: dict[str, str] = {h: ref for h, (ref, _) in (placed or {}).items()}
    reasons: dict[str, str] = {h: why for h, (_, why) in (placed or {}).items()}
    for event in events:
        if event.at >= end:
            break
        if not opened and event.at >= start:
            result.opening, opened = balance, True
        data = event.data
        amount = int(data.get("amount", 0))
        if event.name == "HoldPlaced":
            references[data["hold_id"]], reasons[data["hold_id"]] = hold_placed(data)
            continue
        if event.name == "Granted":
            balance += amount
            bucket = "payments" if data.get("source") == "payment" else "grants"
        elif event.name in {"Charged", "HoldCaptured"}:
            balance -= amount
            bucket = "charges"
        elif event.name == "Debited":
            balance -= amount
            bucket = "adjustments" if data.get("kind") == "adjustment" else "refunds"
        else:
            continue
        if event.at < start:
            continue
        setattr(result, bucket, getattr(result, bucket) + amount)
        ref = data.get("reference") or references.get(data.get("hold_id", ""), "")
        kind = data.get("reason") or reasons.get(data.get("hold_id", ""), "") or "other"
        if bucket == "charges":
            ref = ref or "other"
            result.charges_by_reference[ref] = result.charges_by_reference.get(ref, 0) + amount
            result.charges_by_kind[kind] = result.charges_by_kind.get(kind, 0) + amount
        result.items.append(StatementItem(event.at, bucket, kind, ref, amount, balance))
    if not opened:
        result.opening = balance
    result.closing = balance
    return result
