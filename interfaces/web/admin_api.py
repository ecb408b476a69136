"""Admin reads and actions the dashboard needs beyond ``/api/v1/admin`` (admin only).

Reads come from the read models (lists, history, load) or the aggregates (an account's
holds and window totals now). Key revocation goes through ``ApiKeyStore.revoke`` with the
admin as actor, so it lands in the security audit trail like every other admin action.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

from litestar import Router, delete, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from domain.errors import AccountNotFoundError
from domain.marketplace import OfferQuery
from domain.money import micros_to_usd
from domain.reservations import Reservation
from domain.services.marketplace import InstanceNotFoundError
from infrastructure.identity.auth import Principal
from interfaces.http.openapi import ADMIN
from interfaces.http.openapi import errors as problems
from interfaces.http.security import provide_admin
from interfaces.presenters.admin import (
    AllPayments,
    Audit,
    BalanceHistory,
    BalancePoint,
    InstanceList,
    KeyRevoked,
    KeysRevoked,
    LedgerChange,
    LedgerPage,
    LedgerRow,
    SecurityEvent,
    owned_instance,
    owned_payment,
)
from interfaces.presenters.auth import ApiKeyList, present_key, present_user
from interfaces.presenters.credits import AutoRenew
from interfaces.presenters.dashboard import (
    AdminAccount,
    FoundUser,
    Hold,
    LoadRow,
    LoadTable,
    Projections,
    ProviderHealth,
    ProviderList,
    ReservationList,
    Streams,
    UserSearch,
    owned_reservation,
    present_account_credits,
)
from interfaces.presenters.instances import present_instance, present_reservation
from interfaces.presenters.payments import present_payment_row
from interfaces.presenters.spending import present_spending
from interfaces.ws import service as ws_service

if TYPE_CHECKING:
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="rows to return")]
Query = Annotated[str, QueryParameter(max_length=200, pattern=r"^[^\x00]*$")]
State = Annotated[str | None, QueryParameter(name="state", max_length=32, pattern=r"^[a-z_]*$")]
RESERVATION_TOPIC = f"{Reservation.__module__}:Reservation.Requested"
PROBE_TIMEOUT = 5.0


ADMIN_ERRORS = problems(*ADMIN, 404)


def _iso(micros: int) -> str | None:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat() if micros else None


def _actor(principal: Principal) -> str:
    return f"admin:{principal.email}"


@get(
    "/search/users",
    sync_to_thread=True,
    summary="Find users by email or name",
    responses=ADMIN_ERRORS,
    description=(
        "Finds users whose email or name contains `q` (every user when it is empty), with their "
        "remaining and held credits, at most `limit`. Admin role only; changes nothing."
    ),
)
def search_users(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    q: Query = "",
    limit: Limit = 50,
) -> UserSearch:
    return UserSearch(
        users=[
            FoundUser(
                id=u.id,
                email=u.email,
                name=u.name,
                is_admin=u.is_admin,
                created_at=u.created_at,
                credits_remaining=micros_to_usd(u.balance),
                credits_held=micros_to_usd(u.held),
            )
            for u in c.user_queries.search(q, limit)
        ]
    )


@get(
    "/users/{user_id:uuid}/account",
    sync_to_thread=True,
    summary="An account now (aggregate)",
    responses=ADMIN_ERRORS,
    description=(
        "One user's account as the ledger aggregate has it now: balance, available and held "
        "credits, spending per window, the user's limit overrides, open holds and auto-renew "
        "(never the card token), with `as_of`; `credits` is null while the user has no account. "
        "Admin role only; changes nothing. 404 for an unknown user."
    ),
)
def account(
    c: NamedDependency[Container], principal: NamedDependency[Principal], user_id: FromPath[UUID]
) -> AdminAccount:
    user = c.users.by_id(str(user_id))
    try:
        view = c.ledger.account(user.id)
    except AccountNotFoundError:
        return AdminAccount(user=present_user(user), credits=None, spending=None)
    renew = view.auto_renew
    return AdminAccount(
        user=present_user(user),
        credits=present_account_credits(view),
        spending=present_spending(view.spending),
        limit_overrides={k: micros_to_usd(v) for k, v in view.limits.items()},
        holds=[
            Hold(
                hold_id=h.hold_id,
                amount=micros_to_usd(h.amount),
                captured=micros_to_usd(h.captured),
                expires_at=h.expires_at.isoformat(),
            )
            for h in view.holds
        ],
        auto_renew=AutoRenew(
            enabled=bool(renew["enabled"]),
            threshold=micros_to_usd(int(renew["threshold"])),
            amount=micros_to_usd(int(renew["amount"])),
        ),
        as_of=view.as_of.isoformat(),
    )


@get(
    "/users/{user_id:uuid}/transactions",
    sync_to_thread=True,
    summary="An account's ledger",
    responses=ADMIN_ERRORS,
    operation_id="getUserTransactions",
    description=(
        "One user's ledger movements, newest first, with actor and reason; pages with `limit` and "
        "`before` as GET /billing/transactions. Admin role only; changes nothing. 404 for an "
        "unknown user."
    ),
)
def transactions(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    limit: Limit = 100,
    before: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1)] = None,
) -> LedgerPage:
    user = c.users.by_id(str(user_id))
    rows = c.queries.transactions(user.id, limit=limit, before=before)
    return LedgerPage(
        transactions=[
            LedgerRow(
                id=t.position,
                kind=t.kind,
                amount=micros_to_usd(t.amount),
                hold_id=t.hold_id or None,
                reason=t.reason,
                reference=t.reference,
                actor=t.actor,
                at=_iso(t.at_micros),
            )
            for t in rows
        ],
        next_before=rows[-1].position if len(rows) == limit else None,
    )


@get(
    "/users/{user_id:uuid}/balance-history",
    sync_to_thread=True,
    summary="Balance after each movement (newest ``limit`` points, oldest first)",
    responses=ADMIN_ERRORS,
    description=(
        "One user's balance after each ledger movement: the newest `limit` points, oldest first, "
        "for a chart. Admin role only; changes nothing. 404 for an unknown user."
    ),
)
def balance_history(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    limit: Limit = 200,
) -> BalanceHistory:
    user = c.users.by_id(str(user_id))
    points = [
        BalancePoint(id=p.position, at=_iso(p.at_micros), balance=micros_to_usd(p.balance))
        for p in c.queries.balance_history(user.id, limit)
    ]
    return BalanceHistory(points=points)


@get(
    "/users/{user_id:uuid}/apikeys",
    sync_to_thread=True,
    summary="A user's API keys",
    responses=ADMIN_ERRORS,
    description=(
        "One user's API keys, revoked and expired ones included, never the secrets. Admin role "
        "only; changes nothing. 404 for an unknown user."
    ),
)
def api_keys(
    c: NamedDependency[Container], principal: NamedDependency[Principal], user_id: FromPath[UUID]
) -> ApiKeyList:
    user = c.users.by_id(str(user_id))
    return ApiKeyList(api_keys=[present_key(k) for k in c.auth.keys.list(user.id)])


@delete(
    "/users/{user_id:uuid}/apikeys/{key_id:str}",
    status_code=200,
    sync_to_thread=True,
    summary="Revoke one of a user's API keys (audited)",
    responses=ADMIN_ERRORS,
    description=(
        "Revokes one of a user's API keys: it stops authenticating at once, and the revocation is "
        "kept in the user's security audit trail with the admin as actor. Admin role only. 404 for "
        "an unknown user, or a key that is not theirs or is already revoked."
    ),
)
def revoke_key(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    key_id: FromPath[str],
) -> KeyRevoked:
    user = c.users.by_id(str(user_id))
    c.auth.keys.revoke(user.id, key_id, actor=_actor(principal))
    return KeyRevoked(message="API key revoked", key_id=key_id)


@delete(
    "/users/{user_id:uuid}/apikeys",
    status_code=200,
    sync_to_thread=True,
    summary="Revoke every active API key of a user (audited)",
    responses=ADMIN_ERRORS,
    description=(
        "Revokes every active API key of a user at once (for a leak), each kept in the security "
        "audit trail with the admin as actor, and answers the revoked ids. Admin role only. 404 "
        "for an unknown user."
    ),
)
def revoke_all_keys(
    c: NamedDependency[Container], principal: NamedDependency[Principal], user_id: FromPath[UUID]
) -> KeysRevoked:
    user = c.users.by_id(str(user_id))
    revoked = []
    for key in c.auth.keys.list(user.id):
        if key.revoked_at is None:
            c.auth.keys.revoke(user.id, key.id, actor=_actor(principal))
            revoked.append(key.id)
    return KeysRevoked(revoked=revoked, count=len(revoked))


@get(
    "/users/{user_id:uuid}/audit",
    sync_to_thread=True,
    summary="Security and ledger audit trail",
    responses=ADMIN_ERRORS,
    description=(
        "One user's audit trail: security events (registration, logins, keys, roles) and the "
        "ledger changes someone made (grants, limits, resets, caps, refunds), each with actor and "
        "reason; the newest `limit` of each. Admin role only; changes nothing. 404 for an unknown "
        "user."
    ),
)
def audit(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    user_id: FromPath[UUID],
    limit: Limit = 100,
) -> Audit:
    user = c.users.by_id(str(user_id))
    security = [
        SecurityEvent(at=at, actor=actor, action=action, detail=detail)
        for at, actor, action, detail in c.users.security_events(user.id)
    ]
    try:
        history = c.ledger.history(user.id)
    except AccountNotFoundError:
        history = []
    ledger = [
        LedgerChange(
            version=e.version,
            event=e.name,
            at=e.at.isoformat(),
            actor=str(e.data.get("actor", "")),
            reason=str(e.data.get("reason", "")),
        )
        for e in history
        if e.data.get("actor")
    ]
    return Audit(security=security[-limit:], ledger=ledger[-limit:])


@get(
    "/instances",
    sync_to_thread=True,
    summary="Every user's instances, newest first",
    responses=ADMIN_ERRORS,
    description=(
        "Every user's instances, newest first, with their owner; only those in `state` when given, "
        "at most `limit`. Admin role only; changes nothing."
    ),
)
def instances(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    in_state: State = None,
    limit: Limit = 100,
) -> InstanceList:
    now = c.ledger.clock()
    out = []
    for row in c.instance_queries.everyone(in_state, limit):
        try:
            gpu = c.marketplace.get(UUID(row.instance_id))
        except InstanceNotFoundError:
            continue
        out.append(owned_instance(present_instance(gpu, now), row.owner, row.owner_email))
    return InstanceList(instances=out, count=len(out))


@get(
    "/reservations",
    sync_to_thread=True,
    summary="Every user's reservations, newest first",
    responses=ADMIN_ERRORS,
    description=(
        "Every user's reservations, newest first, with their owner, at most `limit`. Admin role "
        "only; changes nothing."
    ),
)
def reservations(
    c: NamedDependency[Container], principal: NamedDependency[Principal], limit: Limit = 50
) -> ReservationList:
    newest: deque[UUID] = deque(maxlen=limit)
    start = 1
    while True:
        page = c.events.recorder.select_notifications(
            start=start, limit=1000, topics=[RESERVATION_TOPIC]
        )
        newest.extend(UUID(str(n.originator_id)) for n in page)
        if len(page) < 1000:
            break
        start = page[-1].id + 1
    out = []
    for rid in reversed(newest):
        found = c.marketplace.get_reservation(rid)
        out.append(owned_reservation(present_reservation(found), found.owner))
    return ReservationList(reservations=out, count=len(out))


@get(
    "/load",
    sync_to_thread=True,
    summary="Load table: every instance's traffic",
    responses=ADMIN_ERRORS,
    operation_id="getAllLoad",
    description=(
        "The load table over every user's instances: requests, errors, mean latency and last "
        "request from the read model, with live connections and ejection from this replica's "
        "proxy, and the owner. Admin role only; changes nothing."
    ),
)
def load(
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    principal: NamedDependency[Principal],
) -> LoadTable:
    live = runtime.tracker.snapshot()
    out = []
    for row in c.instance_queries.load_table():
        now = live.get(row.instance_id)
        requests = row.requests
        out.append(
            LoadRow(
                instance_id=row.instance_id,
                owner=row.owner,
                owner_email=row.owner_email,
                provider=row.provider,
                state=row.state,
                requests=requests,
                errors=row.errors,
                mean_latency_ms=round(row.latency_ms_sum / requests, 3) if requests else None,
                last_at=_iso(row.last_at),
                active_connections=now.active if now else 0,
                ejected=bool(now and now.ejected),
            )
        )
    return LoadTable(instances=out, count=len(out))


@get(
    "/providers",
    summary="Marketplace health: a live probe and instance counts per provider",
    responses=ADMIN_ERRORS,
    description=(
        "Probes every configured marketplace now (a one-offer search, 5 seconds at most) and "
        "answers for each whether it is healthy or its error, the probe's latency and its "
        "instances per state. Admin role only; changes nothing."
    ),
)
async def providers(
    c: NamedDependency[Container], principal: NamedDependency[Principal]
) -> ProviderList:

    async def probe(name: str) -> ProviderHealth:
        started = time.perf_counter()
        try:
            offers = await asyncio.wait_for(
                c.marketplace.providers[name].search(OfferQuery(limit=1)), PROBE_TIMEOUT
            )
        except Exception as exc:
            return ProviderHealth(
                name=name,
                healthy=False,
                error=f"{type(exc).__name__}: {exc}"[:300],
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
                instances={},
            )
        return ProviderHealth(
            name=name,
            healthy=True,
            offers_seen=len(offers),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            instances={},
        )

    names = sorted(c.marketplace.providers)
    results = await asyncio.gather(*(probe(n) for n in names))

    by_state = await asyncio.to_thread(c.instance_queries.counts_by_provider)
    for item in results:
        item.instances = by_state.get(item.name, {})
    return ProviderList(providers=list(results))


@get(
    "/payments",
    sync_to_thread=True,
    summary="Every user's payments, newest first",
    responses=ADMIN_ERRORS,
    description=(
        "Every user's payments, newest first, with the owner's email; only those in `state` when "
        "given, at most `limit`. Admin role only; changes nothing."
    ),
)
def payments(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    in_state: State = None,
    limit: Limit = 100,
) -> AllPayments:
    out = [
        owned_payment(present_payment_row(payment), payment.owner, email)
        for payment, email in c.payment_queries.everyone(in_state, limit)
    ]
    return AllPayments(payments=out, count=len(out))


@get(
    "/projections",
    sync_to_thread=True,
    summary="Projection positions, lag and errors",
    responses=ADMIN_ERRORS,
    description=(
        "The read models' state: the event store's head, each projection's position and lag, the "
        "last projection error, and the WebSocket feed's cursor and connections. Admin role only; "
        "changes nothing."
    ),
)
def projections(
    c: NamedDependency[Container],
    streams: NamedDependency[ws_service.Streams],
    principal: NamedDependency[Principal],
) -> Projections:
    head = c.events.head()
    positions = c.runner.positions()
    return Projections(
        head=head,
        positions=positions,
        lag={name: max(0, head - pos) for name, pos in positions.items()},
        last_error=c.runner.last_error,
        streams=Streams(cursor=streams.feed.cursor, connections=len(streams.hub.sessions)),
    )


router = Router(
    path="/api/v1/admin",
    tags=["admin"],
    dependencies={"principal": Provide(provide_admin)},
    route_handlers=[
        search_users,
        account,
        transactions,
        balance_history,
        api_keys,
        revoke_key,
        revoke_all_keys,
        audit,
        instances,
        reservations,
        load,
        providers,
        payments,
        projections,
    ],
)
