"""Credit and spending actions: balance, guard-rail windows, a spend check, transactions.

The same ledger service and read models as ``interfaces/http/controllers/money.py``, answered
in the same JSON shapes (USD decimal strings).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from msgspec import Meta, Struct

from domain.errors import InsufficientCreditsError, SpendingLimitExceededError
from domain.money import micros_to_usd
from interfaces.agents.base import Action, NoArgs, Result
from interfaces.http.errors import spending_body
from interfaces.http.payment_rows import payment_row_json
from interfaces.http.schemas import SpendCheckBody, positive_usd
from interfaces.http.security import read
from interfaces.presenters.credits import credits_json
from interfaces.spending_view import spending_json

if TYPE_CHECKING:
    from infrastructure.identity.auth import Principal
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container


class TransactionsArgs(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    before: Annotated[int, Meta(ge=1, le=2**63 - 1)] | None = None


async def get_credits(c: Container, _rt: ProxyRuntime, p: Principal, _a: NoArgs) -> Result:
    return credits_json(await read(c, c.queries.balance, p.user_id))


def _spending(c: Container, user_id: str) -> Result:
    return {"user_id": user_id, **spending_json(c.ledger.spending(user_id))}


async def get_spending_info(c: Container, _rt: ProxyRuntime, p: Principal, _a: NoArgs) -> Result:
    return await asyncio.to_thread(_spending, c, p.user_id)


def _check(c: Container, user_id: str, amount: int) -> Result:
    try:
        view = c.ledger.check_spend(user_id, amount)
    except SpendingLimitExceededError as exc:
        return {"allowed": False, "reason": exc.message, **spending_body(exc)}
    except InsufficientCreditsError as exc:
        return {"allowed": False, "reason": exc.message, "violations": [], "spent": {}}
    spent = {k: micros_to_usd(v) for k, v in view.window_spend.items()}
    return {"allowed": True, "violations": [], "spent": spent}


async def check_spending_limit(
    c: Container, _rt: ProxyRuntime, p: Principal, a: SpendCheckBody
) -> Result:
    amount = positive_usd(a.estimated_cost, "estimated_cost")
    return await asyncio.to_thread(_check, c, p.user_id, amount)


def _transactions(c: Container, user_id: str, a: TransactionsArgs) -> Result:
    rows = c.queries.transactions(user_id, limit=a.limit, before=a.before)
    payments = c.payment_queries.for_user(user_id, limit=a.limit) if a.before is None else []
    return {
        "payments": [payment_row_json(p) for p in payments],
        "transactions": [
            {
                "id": r.position,
                "type": r.kind,
                "amount": micros_to_usd(r.amount),
                "hold_id": r.hold_id or None,
                "reason": r.reason,
                "reference": r.reference,
                "created_at": datetime.fromtimestamp(r.at_micros / 1_000_000, UTC).isoformat(),
            }
            for r in rows
        ],
        "next_before": rows[-1].position if len(rows) == a.limit else None,
    }


async def get_billing_transactions(
    c: Container, _rt: ProxyRuntime, p: Principal, a: TransactionsArgs
) -> Result:
    return await asyncio.to_thread(_transactions, c, p.user_id, a)


ACTIONS = (
    Action(
        name="get_credits",
        description="Your credit balance in USD: remaining, available (minus holds), held.",
        args=NoArgs,
        handler=get_credits,
        read_only=True,
        aliases=("billing.credits", "credits", "billing.check"),
    ),
    Action(
        name="get_spending_info",
        description="Guard-rail spending: USD spent, limit and remaining per time window.",
        args=NoArgs,
        handler=get_spending_info,
        read_only=True,
        aliases=("guardrails.spending", "spending.current", "spending-info", "guardrails.limits"),
    ),
    Action(
        name="check_spending_limit",
        description=(
            "Would spending this many USD now be allowed by your credits and guard rails? "
            "Answers allowed true/false with the windows that would be exceeded."
        ),
        args=SpendCheckBody,
        handler=check_spending_limit,
        read_only=True,
        aliases=("guardrails.check", "spending-check", "check-spending-limit"),
        money=("estimated_cost",),
        hints={"estimated_cost": "USD amount greater than zero, e.g. 2.50"},
    ),
    Action(
        name="get_billing_transactions",
        description="Your money movements (grants, holds, charges, refunds) and payments.",
        args=TransactionsArgs,
        handler=get_billing_transactions,
        read_only=True,
        aliases=("billing.transactions", "billing.query", "billing-transactions", "transactions"),
        items="transactions",
        hints={"limit": "page size (1-500)", "before": "cursor from next_before"},
    ),
)
