"""Credits, transactions, usage and guard-rail spending for the calling user."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from domain.errors import InvalidArgumentError
from domain.money import micros_to_usd, usd_to_micros
from infrastructure.auth import Principal
from interfaces.http.errors import guardrail_headers
from interfaces.http.payment_rows import payment_row_json
from interfaces.http.schemas import SpendCheckBody
from interfaces.http.security import container_of, provide_principal, read
from interfaces.spending_view import spending_json

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="page size")]
Before = Annotated[
    int | None, QueryParameter(ge=1, le=2**63 - 1, description="position cursor from next_before")
]
Day = Annotated[date | None, QueryParameter(description="UTC day, YYYY-MM-DD")]


def positive_usd(value: Any, field: str) -> int:
    micros = usd_to_micros(value, field=field)
    if micros <= 0:
        raise InvalidArgumentError(f"{field} must be greater than zero", field=field)
    return micros


def credits_json(row: dict[str, int] | None) -> dict[str, Any]:
    row = row or {}
    balance, held = row.get("balance", 0), row.get("held", 0)
    return {
        "credits_remaining": micros_to_usd(balance),
        "credits_available": micros_to_usd(balance - held),
        "credits_held": micros_to_usd(held),
        "credits_total": micros_to_usd(row.get("total_granted", 0)),
        "credits_spent": micros_to_usd(row.get("total_charged", 0)),
        "credits_overage": micros_to_usd(max(0, -balance)),
        "credits_cap": micros_to_usd(row.get("cap", 0)),
        "credits_auto_renew": {
            "enabled": bool(row.get("auto_renew_enabled", 0)),
            "threshold": micros_to_usd(row.get("auto_renew_threshold", 0)),
            "amount": micros_to_usd(row.get("auto_renew_amount", 0)),
        },
        "currency": "USD",
    }


@get("/billing/credits", summary="Your credit balance")
async def credits(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> dict[str, Any]:
    c = container_of(request)
    return credits_json(await read(c, c.queries.balance, principal.user_id))


@get("/billing/transactions", sync_to_thread=True, summary="Your money movements, newest first")
def transactions(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    limit: Limit = 50,
    before: Before = None,
) -> dict[str, Any]:
    c = container_of(request)
    rows = c.queries.transactions(principal.user_id, limit=limit, before=before)
    payments = c.payment_queries.for_user(principal.user_id, limit=limit) if before is None else []
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
        "next_before": rows[-1].position if len(rows) == limit else None,
    }


@get("/usage", sync_to_thread=True, summary="Your daily usage")
def usage(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    since: Day = None,
    until: Day = None,
) -> dict[str, Any]:
    if since and until and since > until:
        raise InvalidArgumentError("since must not be after until", field="since")
    days = container_of(request).queries.usage(
        principal.user_id,
        since.isoformat() if since else None,
        until.isoformat() if until else None,
    )
    return {
        "days": [
            {
                "day": d.day,
                "spent": micros_to_usd(d.spent),
                "requests": d.spend_count,
                "granted": micros_to_usd(d.granted),
                "debited": micros_to_usd(d.debited),
            }
            for d in days
        ]
    }


@get("/guardrails/spending", sync_to_thread=True, summary="Spend per guard-rail window")
def spending(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[dict[str, Any]]:
    report = container_of(request).ledger.spending(principal.user_id)
    body = {"user_id": principal.user_id, **spending_json(report)}
    return Response(body, headers=guardrail_headers(report.spent, exceeded=bool(report.exceeded)))


@post(
    "/guardrails/spending/check",
    status_code=200,
    sync_to_thread=True,
    summary="Would this cost be allowed now? 200 allowed, 402 with violations",
)
def check_spending(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    data: JSONBody[SpendCheckBody],
) -> Response[dict[str, Any]]:
    amount = positive_usd(data.estimated_cost, "estimated_cost")
    view = container_of(request).ledger.check_spend(principal.user_id, amount)
    body = {"allowed": True, "spent": {k: micros_to_usd(v) for k, v in view.window_spend.items()}}
    return Response(body, headers=guardrail_headers(view.window_spend, exceeded=False))


router = Router(
    path="/api/v1",
    tags=["billing"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[credits, transactions, usage, spending, check_spending],
)
