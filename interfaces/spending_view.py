"""The guard-rail spending report as plain JSON data, for doors that answer dicts.

The answer itself is ``interfaces.presenters.spending.present_spending`` (REST returns it);
this renders the same Struct, so every door reports the same data.
"""

from __future__ import annotations

from typing import Any

import msgspec

from domain.guardrails import SpendingReport
from interfaces.presenters.spending import present_spending


def spending_json(report: SpendingReport) -> dict[str, Any]:
    """Spent per window, holds, limits in force, room left and the windows with none left."""
    data: dict[str, Any] = msgspec.to_builtins(present_spending(report))
    return data
