"""The guard-rail spending report as every door answers it (REST, agents/MCP, CLI, WebSocket).

Built from ``LedgerService.spending`` (or an ``AccountView``'s ``spending``): the aggregate's
own ``spending_report``, so ``remaining`` and ``exceeded`` are exactly what a charge would be
told at the same instant: spend plus outstanding holds against each limit (USD strings).
"""

from __future__ import annotations

from typing import Any

from domain.guardrails import SpendingReport
from domain.money import micros_to_usd


def spending_json(report: SpendingReport) -> dict[str, Any]:
    """Spent per window, holds, limits in force, room left and the windows with none left."""
    return {
        "guard_rails_enabled": report.enabled,
        "window_spent": {k: micros_to_usd(v) for k, v in report.spent.items()},
        "held": micros_to_usd(report.held),
        "limits": {k: micros_to_usd(v) for k, v in report.limits.items()},
        "remaining": {k: micros_to_usd(v) for k, v in report.remaining.items()},
        "exceeded": report.exceeded,
        "timestamp": report.as_of.isoformat(),
    }
