"""Credits, transactions, usage and guard-rail spending for the calling user."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated

from litestar import Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from domain.errors import InvalidArgumentError
from infrastructure.identity.auth import Principal
from interfaces.http.errors import guardrail_headers
from interfaces.http.openapi import AUTHED, errors
from interfaces.http.schemas import SpendCheckBody, positive_usd
from interfaces.http.security import provide_principal, read
from interfaces.presenters.credits import Credits, present_credits
from interfaces.presenters.ledger import (
    TransactionsPage,
    Usage,
    present_transactions,
    present_usage,
)
from interfaces.presenters.payments import present_payment_row
from interfaces.presenters.spending import (
    SpendCheck,
    UserSpending,
    present_check,
    present_user_spending,
)

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="page size")]
Before = Annotated[
    int | None, QueryParameter(ge=1, le=2**63 - 1, description="position cursor from next_before")
]
Day = Annotated[date | None, QueryParameter(description="UTC day, YYYY-MM-DD")]


@get(
    "/billing/credits",
    summary="Your credit balance",
    responses=errors(*AUTHED),
    description=(
        "The caller's credit balance as USD strings with six decimals: remaining, available "
        "(remaining less held), held by open rentals and proxy leases, total granted and paid, "
        "spent, overage and its cap, and the auto-renew setting. Any authenticated caller (API key "
        "or Bearer token), for their own account only; it changes nothing."
    ),
)
async def credits(c: NamedDependency[Container], principal: NamedDependency[Principal]) -> Credits:
    return present_credits(await read(c, c.queries.balance, principal.user_id))


@get(
    "/billing/transactions",
    sync_to_thread=True,
    summary="Your money movements, newest first",
    responses=errors(*AUTHED),
    description=(
        "The caller's ledger movements (grants, payments, charges, holds and their captures, "
        "refunds), newest first, `limit` per page (1-500, default 50). Pass an answer's "
        "`next_before` as `before` for the next page; the first page also lists the caller's "
        "latest payments in every state. Own account only; changes nothing. 400 names a bad "
        "`limit` or `before`."
    ),
)
def transactions(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    limit: Limit = 50,
    before: Before = None,
) -> TransactionsPage:
    rows = c.queries.transactions(principal.user_id, limit=limit, before=before)
    payments = c.payment_queries.for_user(principal.user_id, limit=limit) if before is None else []
    return present_transactions(rows, [present_payment_row(p) for p in payments], limit)


@get(
    "/usage",
    sync_to_thread=True,
    summary="Your daily usage",
    responses=errors(*AUTHED),
    description=(
        "The caller's usage per UTC day: spent, granted and debited amounts and the number of "
        "charged requests, from `since` to `until` (YYYY-MM-DD, both optional). Own account only; "
        "changes nothing. 400 when a day is malformed or `since` is after `until`."
    ),
)
def usage(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    since: Day = None,
    until: Day = None,
) -> Usage:
    if since and until and since > until:
        raise InvalidArgumentError("since must not be after until", field="since")
    days = c.queries.usage(
        principal.user_id,
        since.isoformat() if since else None,
        until.isoformat() if until else None,
    )
    return present_usage(days)


@get(
    "/guardrails/spending",
    sync_to_thread=True,
    summary="Spend per guard-rail window",
    responses=errors(*AUTHED),
    description=(
        "What the caller has spent in each guard-rail window (from minutes to a month) against the "
        "limit in force for it, and which windows are exceeded; the `X-Guardrail-*` headers repeat "
        "the totals. Own account only; changes nothing."
    ),
)
def spending(
    c: NamedDependency[Container], principal: NamedDependency[Principal]
) -> Response[UserSpending]:
    report = c.ledger.spending(principal.user_id)
    body = present_user_spending(principal.user_id, report)
    return Response(body, headers=guardrail_headers(report.spent, exceeded=bool(report.exceeded)))


@post(
    "/guardrails/spending/check",
    status_code=200,
    sync_to_thread=True,
    summary="Would this cost be allowed now? 200 allowed, 402 with violations",
    responses=errors(*AUTHED, 402),
    description=(
        "Asks whether spending `estimated_cost` (USD, greater than zero) now would stay within "
        "every guard-rail window: 200 with the window totals when it would, 402 naming the "
        "violated windows when it would not. Nothing is held or recorded. Own account only. 400 "
        "for a missing, zero, negative or over-precise amount."
    ),
)
def check_spending(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    data: JSONBody[SpendCheckBody],
) -> Response[SpendCheck]:
    amount = positive_usd(data.estimated_cost, "estimated_cost")
    view = c.ledger.check_spend(principal.user_id, amount)
    body = present_check(view.window_spend)
    return Response(body, headers=guardrail_headers(view.window_spend, exceeded=False))


router = Router(
    path="/api/v1",
    tags=["billing"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[credits, transactions, usage, spending, check_spending],
)
