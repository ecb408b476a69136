"""Payments: start one, read them, auto-renew, monthly statements, Stripe webhooks, refunds."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get, post, put
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from domain.errors import InvalidArgumentError
from domain.money import micros_to_usd
from domain.payments import Payment
from domain.ports.payments import InvalidWebhookError
from domain.services.payments import PaymentNotFoundError, PaymentRequest
from infrastructure.identity.auth import Principal
from infrastructure.payments import SETUP_VARIABLES
from interfaces.http.openapi import ADMIN, AUTHED, answers, errors, json_body, operation
from interfaces.http.schemas import NO_NUL, Body, Reason, positive_usd
from interfaces.http.security import provide_admin, provide_principal
from interfaces.payment_input import payment_method, processor_of
from interfaces.presenters.payments import (
    AutoRenewSetting,
    CreatedPayment,
    PaymentList,
    WebhookReceipt,
    present_created,
    present_payment,
    present_payment_row,
)
from interfaces.presenters.payments import Payment as PaymentAnswer
from interfaces.presenters.statements import MonthlyStatement, present_statement
from interfaces.statement_export import FORMATS, split_format, statement_file
from interfaces.statement_view import build_statement

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)
HANDLED_WEBHOOKS = {
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
}


class PaymentBody(Body):
    amount: Decimal
    currency: Annotated[str, Meta(min_length=1, max_length=8, pattern=NO_NUL)] = "USD"
    provider: Annotated[str, Meta(max_length=32, pattern=NO_NUL)] | None = None


class AutoRenewBody(Body):
    enabled: bool
    threshold: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)
    payment_method: Annotated[str, Meta(max_length=300, pattern=NO_NUL)] = ""
    provider: Annotated[str, Meta(max_length=32, pattern=NO_NUL)] = "stripe"


class RefundBody(Body):
    amount: Decimal | None = None
    reason: Reason = ""


def payment_json(payment: Payment) -> dict[str, Any]:
    """The payment as plain data (doors that answer dicts)."""
    data: dict[str, Any] = msgspec.to_builtins(present_payment(payment))
    return data


def _status_for(payment: Payment, new: bool) -> int:
    if payment.state == "failed":
        return 402
    if payment.state == "initiated":
        return 202
    return 201 if new else 200


@post(
    "/billing/payment",
    status_code=201,
    summary="Pay for credits (Stripe, crypto or AfterDark)",
    responses={
        **answers(CreatedPayment, 200, 202, description="A replay (200) or waiting (202)"),
        **errors(*AUTHED, 402, 409, 503),
    },
    description=(
        "Starts a payment of `amount` USD (whole cents, within the server's limits) through "
        "`provider` (or the `X-Billing` header): stripe, crypto or afterdark, with the method in "
        "`X-Preferred-Payment`. Credits are added when the processor confirms: at once for a card "
        "that succeeds, later on its webhook or the chain transfer. 201 a new payment, 200 a "
        "replay (same `Idempotency-Key`), 202 waiting for the payer (3-D Secure, crypto transfer), "
        "402 refused by the processor, 409 the same key is still being processed, 503 the "
        "processor is not configured or does not answer."
    ),
)
async def create_payment(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    data: JSONBody[PaymentBody],
) -> Response[CreatedPayment]:
    headers = request.headers
    processor = processor_of(headers.get("x-billing"), data.provider)
    if data.currency.upper() != "USD":
        raise InvalidArgumentError("only USD is supported", field="currency")
    amount = positive_usd(data.amount, "amount")
    settings = c.settings
    if amount % 10_000:
        raise InvalidArgumentError("amount must be whole cents", field="amount")
    if not settings.payments.minimum <= amount <= settings.payments.maximum:
        raise InvalidArgumentError(
            f"amount must be between {micros_to_usd(settings.payments.minimum)} and "
            f"{micros_to_usd(settings.payments.maximum)} USD",
            field="amount",
        )
    c.payments.require(processor)  # before the method: its errors would hide the real one
    stripe = c.stripe
    method = payment_method(
        processor,
        headers.get("x-preferred-payment"),
        test_card=stripe.test_payment_method
        if stripe is not None and stripe.is_test_mode
        else None,
        networks=(settings.payments.crypto_network,) if settings.payments.crypto_enabled else (),
    )
    key = headers.get("idempotency-key") or f"auto-{uuid.uuid4()}"
    if len(key) > 255 or "\x00" in key:
        raise InvalidArgumentError("Idempotency-Key is too long", field="Idempotency-Key")
    payment, new = await c.payments.create(
        PaymentRequest(
            owner=principal.user_id,
            amount=amount,
            currency="USD",
            processor=processor,
            method=method,
            key=key,
        )
    )
    response_headers = {"Idempotency-Key": key}
    if not new:
        response_headers["Idempotent-Replayed"] = "true"
    return Response(
        present_created(payment), status_code=_status_for(payment, new), headers=response_headers
    )


async def _own_payment(c: Container, principal: Principal, pid: UUID) -> Payment:
    payment = await sync_to_thread(c.payments.get, pid)
    if payment.owner != principal.user_id and not principal.is_admin:
        raise PaymentNotFoundError("No such payment", payment_id=str(pid))
    return payment


@get(
    "/billing/payments/{payment_id:uuid}",
    summary="One of your payments",
    responses=errors(*AUTHED, 404),
    description=(
        "One payment by id: amount, processor, state (initiated, succeeded, failed, refunded, …), "
        "refunds and what the payer must do next while it waits. The payment's owner or an admin; "
        "changes nothing. 404 for an unknown payment or one of another user."
    ),
)
async def get_payment(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    payment_id: FromPath[UUID],
) -> PaymentAnswer:
    return present_payment(await _own_payment(c, principal, payment_id))


@get(
    "/billing/payments",
    sync_to_thread=True,
    summary="Your payments, every state, newest first",
    responses=errors(401, 429),
    description=(
        "The caller's latest 100 payments in every state, newest first. Own payments only; changes "
        "nothing."
    ),
)
def list_payments(
    c: NamedDependency[Container], principal: NamedDependency[Principal]
) -> PaymentList:
    rows = c.payment_queries.for_user(principal.user_id, limit=100)
    return PaymentList(payments=[present_payment_row(r) for r in rows], count=len(rows))


@put(
    "/billing/auto-renew",
    sync_to_thread=True,
    summary="Buy credits when they run low",
    responses=errors(*AUTHED, 503),
    description=(
        "Turns auto-renew on or off for the caller: when available credits fall below `threshold`, "
        "the server pays `amount` with the saved card token `payment_method` (`card:pm_…`) through "
        "Stripe or AfterDark. The setting is recorded on the caller's ledger. 400 for crypto (no "
        "saved card), a card number instead of a token, or an amount outside the payment limits; "
        "503 when that processor is not configured."
    ),
)
def auto_renew(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    data: JSONBody[AutoRenewBody],
) -> AutoRenewSetting:
    threshold = amount = 0
    method = ""
    if data.enabled:
        threshold = positive_usd(data.threshold, "threshold")
        amount = positive_usd(data.amount, "amount")
        processor = processor_of(data.provider, None)
        if processor == "crypto":
            raise InvalidArgumentError(
                "auto-renew needs a saved card (Stripe or AfterDark)", field="provider"
            )
        c.payments.require(processor)  # a renewal this server could never pay is refused now
        if (
            not c.settings.payments.minimum <= amount <= c.settings.payments.maximum
            or amount % 10_000
        ):
            raise InvalidArgumentError("amount is outside the payment limits", field="amount")
        chosen = payment_method(processor, data.payment_method)
        if "last4" in chosen:
            raise InvalidArgumentError(
                "save a payment method token (card:pm_…), not a card number",
                field="payment_method",
            )
        method = f"{processor}:card:{chosen['token']}"
    c.ledger.configure_auto_renew(
        principal.user_id,
        enabled=data.enabled,
        threshold=threshold,
        amount=amount,
        payment_method=method,
        actor=principal.user_id,
    )
    return AutoRenewSetting(
        enabled=data.enabled,
        threshold=micros_to_usd(threshold),
        amount=micros_to_usd(amount),
        payment_method=method.split(":", 1)[1] if method else None,
        provider=method.split(":", 1)[0] if method else None,
    )


@get(
    "/billing/statements/{month:str}",
    sync_to_thread=True,
    summary="Monthly statement (YYYY-MM; YYYY-MM.csv or YYYY-MM.pdf for a file)",
    responses={
        **answers(MonthlyStatement, 200, description="The statement (JSON, or CSV/PDF file)"),
        **errors(*AUTHED, 404),
    },
    description=(
        "The caller's statement for one UTC month: opening balance, payments, grants, charges per "
        "instance, refunds and closing balance, with the month's opening and closing hashes. "
        "`YYYY-MM` answers JSON; `YYYY-MM.csv` (text/csv) and `YYYY-MM.pdf` (application/pdf) "
        "answer the same statement as an attachment. Reading an ended month records its hash chain "
        "once, for `verify-statements`. Own account only. 400 for a malformed month or format."
    ),
)
def monthly_statement(
    c: NamedDependency[Container], principal: NamedDependency[Principal], month: FromPath[str]
) -> Response[Any]:
    month, fmt = split_format(month)
    result = build_statement(c, principal.user_id, month)
    if fmt == "json":
        return Response(present_statement(principal.user_id, result))
    data, disposition = statement_file(c.users.by_id(principal.user_id).email, result, fmt)
    return Response(data, media_type=FORMATS[fmt], headers={"Content-Disposition": disposition})


@post(
    "/billing/webhooks/stripe",
    status_code=200,
    summary="Stripe webhook endpoint (signed with Stripe-Signature)",
    operation_class=operation(
        public=True,
        body=json_body("A Stripe event, exactly as Stripe sends it (the signature covers it)"),
    ),
    responses=errors(400, 404),
    description=(
        "Stripe calls this with its events: payment_intent.succeeded and payment_failed, "
        "charge.refunded and charge.dispute.created are applied to the matching payment (credits "
        "added, or taken back on a refund or dispute); other types and unknown payments answer 200 "
        "with `ignored`. Public (no API key), but only a body signed with the configured webhook "
        "secret (`Stripe-Signature`) is accepted: 400 otherwise, or when webhooks are not "
        "configured on this server."
    ),
)
async def stripe_webhook(
    request: Request[Any, Any, Any], c: NamedDependency[Container]
) -> WebhookReceipt:
    gateway = c.stripe
    if gateway is None or not c.settings.payments.stripe_webhook_secret:
        raise InvalidArgumentError(
            "Stripe webhooks are not configured on this server: the operator sets "
            + SETUP_VARIABLES["stripe"]
        )
    payload = await request.body()
    try:
        event = gateway.parse_webhook(payload, request.headers.get("stripe-signature", ""))
    except InvalidWebhookError as exc:
        log.warning("stripe webhook refused: %s", exc)
        raise InvalidArgumentError(f"webhook refused: {exc}", field="Stripe-Signature") from None
    if event.type not in HANDLED_WEBHOOKS:
        return WebhookReceipt(received=True, ignored=event.type)
    payment_id = await sync_to_thread(_payment_for, c, event)
    if payment_id is None:
        log.warning("stripe webhook %s (%s): no matching payment", event.event_id, event.type)
        return WebhookReceipt(received=True, ignored="unknown payment")
    payment = await sync_to_thread(c.payments.apply_webhook, event, payment_id)
    return WebhookReceipt(received=True, payment=str(payment.id), status=payment.state)


def _payment_for(c: Any, event: Any) -> UUID | None:
    """The payment an event is about: our id in the metadata, else the PaymentIntent id."""
    candidate = event.metadata.get("payment_id", "")
    try:
        pid = UUID(candidate) if candidate else None
    except ValueError:
        pid = None
    if pid is not None and c.payments.find(pid) is not None:
        return pid
    if not event.payment_intent_id:
        return None
    found: UUID | None = c.payment_queries.by_external_id(event.payment_intent_id)
    if found is None:
        c.runner.catch_up()  # the projection may be a moment behind
        found = c.payment_queries.by_external_id(event.payment_intent_id)
    return found


@post(
    "/payments/{payment_id:uuid}/refund",
    status_code=200,
    summary="Refund a payment (all or part); credits are debited",
    responses=errors(*ADMIN, 404, 409, 503),
    description=(
        "Refunds a succeeded payment through its processor, all of it or `amount` USD, and debits "
        "the same credits from the owner's account, recorded with the admin as actor. Admin role "
        "only. 404 for an unknown payment; 409 when the payment cannot be refunded (not succeeded, "
        "or more than remains); 503 when the processor does not answer."
    ),
)
async def refund(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    payment_id: FromPath[UUID],
    data: JSONBody[RefundBody],
) -> PaymentAnswer:
    amount = None if data.amount is None else positive_usd(data.amount, "amount")
    actor = f"admin:{principal.user_id}"
    payment = await c.payments.refund(payment_id, amount, actor=actor)
    return present_payment(payment)


router = Router(
    path="/api/v1",
    tags=["billing"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[create_payment, get_payment, list_payments, auto_renew, monthly_statement],
)
webhooks = Router(path="/api/v1", tags=["billing"], route_handlers=[stripe_webhook])
admin_router = Router(
    path="/api/v1/admin",
    tags=["admin"],
    dependencies={"principal": Provide(provide_admin)},
    route_handlers=[refund],
)
