"""The guard-rail spending report as every door answers it (REST, agents/MCP, CLI, WebSocket).

Built from ``LedgerService.spending`` (or an ``AccountView``'s ``spending``): the aggregate's
own ``spending_report``, so ``remaining`` and ``exceeded`` are exactly what a charge would be
told at the same instant: spend plus outstanding holds against each limit (USD strings).
"""

from __future__ import annotations

from msgspec import Struct, structs

from domain.guardrails import SpendingReport
from domain.money import micros_to_usd


class Spending(Struct):
    """Spent per window, holds, limits in force, room left and the windows with none left."""

    guard_rails_enabled: bool
    window_spent: dict[str, str]
    held: str
    limits: dict[str, str]
    remaining: dict[str, str]
    exceeded: list[str]
    timestamp: str


class UserSpending(Spending, kw_only=True):
    """The caller's report, with whose it is."""

    user_id: str


class SpendCheck(Struct):
    """A cost that would be allowed now, and the spend per window it was checked against."""

    allowed: bool
    spent: dict[str, str]


def present_spending(report: SpendingReport) -> Spending:
    return Spending(
        guard_rails_enabled=report.enabled,
        window_spent={k: micros_to_usd(v) for k, v in report.spent.items()},
        held=micros_to_usd(report.held),
        limits={k: micros_to_usd(v) for k, v in report.limits.items()},
        remaining={k: micros_to_usd(v) for k, v in report.remaining.items()},
        exceeded=list(report.exceeded),
        timestamp=report.as_of.isoformat(),
    )


def present_user_spending(user_id: str, report: SpendingReport) -> UserSpending:
    return UserSpending(user_id=user_id, **structs.asdict(present_spending(report)))


def present_check(window_spend: dict[str, int]) -> SpendCheck:
    return SpendCheck(allowed=True, spent={k: micros_to_usd(v) for k, v in window_spend.items()})
