"""POST /api/v1/billing/what-if: the caller's own history replayed under other limits/markup."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Router, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from domain.errors import InvalidArgumentError
from domain.services.what_if import account_what_if
from domain.what_if import MAX_RANGE, Rules, check_range
from infrastructure.identity.auth import Principal
from interfaces.http.openapi import AUTHED, errors
from interfaces.http.security import provide_principal
from interfaces.presenters.what_if import WhatIfAnswer, present_what_if
from interfaces.what_if_view import parse_limits, parse_markup, parse_time

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

FIELDS = frozenset({"from", "to", "markup", "limits"})
MAX_EVENTS = 200_000  # a longer history is an operator's job (the admin CLI): bounded time


@post(
    "/billing/what-if",
    status_code=200,
    sync_to_thread=True,
    summary="What-if replay",
    responses=errors(*AUTHED, 413),
    description=(
        "Replays the caller's recorded charges from `from` to `to` (ISO 8601 times, at most 93 "
        'days apart) under other guard-rail `limits` (for example `{"60min": "10.00"}`) and/or '
        "another GPU `markup` percent, and answers what would have been charged and refused beside "
        "what was. Own account only; writes nothing. 400 names an unknown or invalid field; 413 "
        "when the range holds more than 200000 events (operators replay those with the admin CLI)."
    ),
)
def what_if(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    data: JSONBody[dict[str, Any]],
) -> WhatIfAnswer:
    """Your recorded charges from ``from`` to ``to`` (at most 93 days) replayed under other
    guard-rail ``limits`` ({"60min": "10.00"}) and/or GPU ``markup`` (percent). Writes nothing."""
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise InvalidArgumentError(f"unknown field {unknown[0]!r}", field=unknown[0])
    start, end = parse_time(data.get("from"), "from"), parse_time(data.get("to"), "to")
    check_range(start, end, MAX_RANGE)
    rules = Rules(
        policy=c.ledger.policy,
        limits=parse_limits(data["limits"]) if data.get("limits") is not None else None,
        markup_ppm=parse_markup(data["markup"]) if data.get("markup") is not None else None,
        recorded_markup_ppm=c.settings.marketplace.price_markup_ppm,
    )
    result = account_what_if(c.ledger, principal.user_id, start, end, rules, MAX_EVENTS)
    return present_what_if(principal.user_id, result)


router = Router(
    path="/api/v1",
    tags=["billing"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[what_if],
)
