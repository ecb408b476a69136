"""The what-if replay: the recorded bill beside the bill under other limits or markup."""

from __future__ import annotations

import msgspec
from msgspec import Struct

from domain.money import micros_to_usd
from domain.what_if import Outcome, WhatIf


class Refusal(Struct):
    at: str
    amount: str
    reason: str
    windows: list[str]


class ReplayOutcome(Struct):
    opening_balance: str
    bill: str
    closing_balance: str
    lowest_balance: str
    lowest_balance_at: str | None
    refused: list[Refusal]
    refused_total: str
    auto_renew_at: list[str]


class WhatIfAnswer(Struct):
    """``real``: as recorded; ``what_if``: under the rules asked; ``difference``: what_if - real."""

    user_id: str
    from_: str = msgspec.field(name="from")
    to: str
    currency: str
    real: ReplayOutcome
    what_if: ReplayOutcome
    difference: str


def present_outcome(outcome: Outcome) -> ReplayOutcome:
    return ReplayOutcome(
        opening_balance=micros_to_usd(outcome.opening),
        bill=micros_to_usd(outcome.bill),
        closing_balance=micros_to_usd(outcome.closing),
        lowest_balance=micros_to_usd(outcome.lowest_balance),
        lowest_balance_at=outcome.lowest_at.isoformat() if outcome.lowest_at else None,
        refused=[
            Refusal(
                at=r.at.isoformat(),
                amount=micros_to_usd(r.amount),
                reason=r.reason,
                windows=list(r.windows),
            )
            for r in outcome.refused
        ],
        refused_total=micros_to_usd(sum(r.amount for r in outcome.refused)),
        auto_renew_at=[at.isoformat() for at in outcome.auto_renew_at],
    )


def present_what_if(user_id: str, result: WhatIf) -> WhatIfAnswer:
    return WhatIfAnswer(
        user_id=user_id,
        from_=result.start.isoformat(),
        to=result.end.isoformat(),
        currency="USD",
        real=present_outcome(result.real),
        what_if=present_outcome(result.replay),
        difference=micros_to_usd(result.replay.bill - result.real.bill),
    )
