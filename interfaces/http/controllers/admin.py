"""Admin endpoints: users, grants, per-user limits, resets, caps, roles, stats. Admin only."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

from litestar import Router, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody

from domain.errors import InvalidArgumentError
from domain.guardrails import normalise_window
from domain.money import micros_to_usd, usd_to_micros
from infrastructure.identity.auth import Principal
from interfaces.http.openapi import ADMIN, errors
from interfaces.http.schemas import (
    CapBody,
    GrantBody,
    LimitsBody,
    ResetBody,
    RoleBody,
    positive_usd,
)
from interfaces.http.security import provide_admin
from interfaces.presenters.admin import (
    Cap,
    Grant,
    Limits,
    Reset,
    Stats,
    UserAnswer,
    UserList,
    UserWithCredits,
)
from interfaces.presenters.auth import present_user
from interfaces.presenters.credits import present_credits

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", min_length=1, max_length=200, required=False),
]


def _actor(principal: NamedDependency[Principal]) -> str:
    return f"admin:{principal.email}"


def _window(name: str) -> str:
    try:
        return normalise_window(name)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc), field="window") from None


@get(
    "/users",
    sync_to_thread=True,
    summary="All users",
    responses=errors(401, 403, 429),
    description=(
        "Every registered user (id, email, name, admin role, creation) for operators. Admin role "
        "only (403 for other callers); changes nothing."
    ),
)
def users(c: NamedDependency[Container], principal: NamedDependency[Principal]) -> UserList:
    return UserList(users=[present_user(u) for u in c.users.all()])


@get(
    "/users/{user_id:uuid}",
    sync_to_thread=True,
    summary="One user with credits",
    responses=errors(*ADMIN, 404),
    description=(
        "One user by id, with their credit balance as GET /billing/credits shows it. Admin role "
        "only; changes nothing. 404 for an unknown user."
    ),
)
def user(
    c: NamedDependency[Container], principal: NamedDependency[Principal], user_id: FromPath[UUID]
) -> UserWithCredits:
    found = c.users.by_id(str(user_id))
    return UserWithCredits(
        user=present_user(found), credits=present_credits(c.queries.balance(found.id))
    )


@post(
    "/users/{user_id:uuid}/credits",
    status_code=201,
    sync_to_thread=True,
    summary="Grant credits (USD); Idempotency-Key makes retries one grant",
    responses=errors(*ADMIN, 404),
    description=(
        "Adds `amount` USD (greater than zero, at most six decimals) to the user's credits as an "
        "admin grant, recorded on the ledger with the admin as actor and `reason`. With an "
        "`Idempotency-Key` header a retry is the same grant (`applied: false`, nothing added "
        "twice). Admin role only. 400 for a bad amount; 404 for an unknown user."
    ),
)
def grant(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    data: JSONBody[GrantBody],
    idempotency_key: IdempotencyKey = None,
) -> Grant:
    target = c.users.by_id(str(user_id))
    amount = positive_usd(data.amount, "amount")
    outcome = c.ledger.grant(
        target.id,
        amount,
        key=f"admin-grant:{idempotency_key or uuid.uuid4()}",
        source="admin",
        reason=data.reason,
        actor=_actor(principal),
    )
    view = c.ledger.account(target.id)
    return Grant(
        applied=outcome.applied,
        amount=micros_to_usd(amount),
        credits_remaining=micros_to_usd(view.balance),
    )


@put(
    "/users/{user_id:uuid}/limits",
    sync_to_thread=True,
    summary="Per-user guard-rail limits in USD (0 = off, null = service default)",
    responses=errors(*ADMIN, 404),
    description=(
        "Sets the user's own guard-rail limits: a map from window (`60min`, `1d`, …) to USD, where "
        "0 turns the window off for this user and null returns it to the service default. Recorded "
        "on the ledger with the admin and `reason`; answers every limit now in force. Admin role "
        "only. 400 for an unknown window or a negative amount; 404 for an unknown user."
    ),
)
def set_limits(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    data: JSONBody[LimitsBody],
) -> Limits:
    target = c.users.by_id(str(user_id))
    changes: dict[str, int | None] = {}
    for window, value in data.limits.items():
        name = _window(window)
        changes[name] = None if value is None else usd_to_micros(value, field=name)
        if changes[name] is not None and changes[name] < 0:  # type: ignore[operator]
            raise InvalidArgumentError(f"{name} must not be negative", field=name)
    c.ledger.set_limits(target.id, changes, actor=_actor(principal), reason=data.reason)
    limits = c.ledger.account(target.id).effective_limits
    return Limits(limits={k: micros_to_usd(v) for k, v in limits.items()})


@post(
    "/users/{user_id:uuid}/guardrails/reset",
    status_code=200,
    sync_to_thread=True,
    summary="Reset spending windows (one or all), with a recorded reason",
    responses=errors(*ADMIN, 404),
    description=(
        "Resets the user's spending totals in one guard-rail `window`, or in all of them when none "
        "is named, so that refused spending may go on. The `reason` is required and recorded on "
        "the ledger with the admin. Admin role only. 400 for an unknown window or a missing "
        "reason; 404 for an unknown user."
    ),
)
def reset(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    data: JSONBody[ResetBody],
) -> Reset:
    target = c.users.by_id(str(user_id))
    windows = [_window(data.window)] if data.window else None
    c.ledger.reset_windows(target.id, windows, actor=_actor(principal), reason=data.reason)
    return Reset(message="Spending reset", windows=windows or "all")


@put(
    "/users/{user_id:uuid}/cap",
    sync_to_thread=True,
    summary="Set the overage cap (USD)",
    responses=errors(*ADMIN, 404),
    description=(
        "Sets the user's overage cap: how far below zero (USD) metered charges may take the "
        "balance before they are refused. Recorded on the ledger with the admin and `reason`. "
        "Admin role only. 400 for a bad amount; 404 for an unknown user."
    ),
)
def set_cap(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    data: JSONBody[CapBody],
) -> Cap:
    target = c.users.by_id(str(user_id))
    cap = usd_to_micros(data.cap, field="cap")
    c.ledger.set_cap(target.id, cap, actor=_actor(principal), reason=data.reason)
    return Cap(credits_cap=micros_to_usd(cap))


@put(
    "/users/{user_id:uuid}/role",
    sync_to_thread=True,
    summary="Grant or revoke the admin role",
    responses=errors(*ADMIN, 404),
    description=(
        "Grants (`is_admin: true`) or revokes (`false`) the admin role; the change is kept in the "
        "user's security audit trail with the admin as actor and applies to their next request. "
        "Admin role only. 404 for an unknown user."
    ),
)
def set_role(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    data: JSONBody[RoleBody],
) -> UserAnswer:
    target = c.users.by_id(str(user_id))
    changed = c.users.set_admin(target.email, data.is_admin, actor=_actor(principal))
    return UserAnswer(user=present_user(changed))


@get(
    "/stats",
    sync_to_thread=True,
    summary="Ledger statistics",
    responses=errors(401, 403, 429),
    description=(
        "Totals across the service: users, stored events, accounts, balance, held, granted and "
        "charged sums, transactions, and each projection's lag. Admin role only; changes nothing."
    ),
)
def stats(c: NamedDependency[Container], principal: NamedDependency[Principal]) -> Stats:
    totals = c.queries.totals()
    return Stats(
        users=c.users.count(),
        events=c.events.head(),
        accounts=totals["accounts"],
        balance_total=micros_to_usd(totals["balance"]),
        held_total=micros_to_usd(totals["held"]),
        granted_total=micros_to_usd(totals["granted"]),
        charged_total=micros_to_usd(totals["charged"]),
        transactions=totals["transactions"],
        projection_lag=dict(c.runner.lag()),
    )


router = Router(
    path="/api/v1/admin",
    tags=["admin"],
    dependencies={"principal": Provide(provide_admin)},
    route_handlers=[users, user, grant, set_limits, reset, set_cap, set_role, stats],
)
