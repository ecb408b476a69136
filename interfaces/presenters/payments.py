"""Payments: one payment in full, a read-model row, the list, a webhook's answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from msgspec import Struct, structs

from domain.money import micros_to_usd
from domain.payments import Payment as PaymentState


class PaymentRow(Struct):
    """A payment as lists show it (the payments read model)."""

    id: str
    status: str
    amount: str
    currency: str
    provider: str
    payment_method: str
    credited: str
    refunded: str
    failure: str | None
    created_at: str


class PaymentList(Struct):
    payments: list[PaymentRow]
    count: int


class CryptoDetails(Struct):
    """Where and how much USDC to send; ``amount_units`` has 6 decimals (= micro-USD)."""

    network: str | None
    token: str
    token_contract: str | None
    pay_to: str | None
    from_wallet: str | None
    amount_units: int
    received: str
    expires_at: str | None
    flags: list[str]


class Payment(Struct, omit_defaults=True):
    """One payment: its state, amounts in USD, the method without its token; ``crypto`` only
    for USDC payments."""

    id: str
    status: str
    amount: str
    currency: str
    provider: str
    payment_method: dict[str, Any]
    external_id: str | None
    credited: str
    refunded: str
    disputed: str
    failure: str | None
    next_action_url: str | None
    created_at: str
    updated_at: str
    crypto: CryptoDetails | None = None


class CreatedPayment(Payment, kw_only=True):
    """A new (or replayed) payment; ``transaction`` repeats it for older clients."""

    transaction: Payment


class WebhookReceipt(Struct, omit_defaults=True):
    """A webhook was received: the payment it moved, or why it was ignored."""

    received: bool
    ignored: str | None = None
    payment: str | None = None
    status: str | None = None


class AutoRenewSetting(Struct):
    enabled: bool
    threshold: str
    amount: str
    payment_method: str | None
    provider: str | None


def present_payment_row(row: Any) -> PaymentRow:
    """A ``PaymentRow`` of the read model (``PaymentQueries``)."""
    return PaymentRow(
        id=row.payment_id,
        status=row.state,
        amount=micros_to_usd(row.amount),
        currency=row.currency,
        provider=row.processor,
        payment_method=row.method,
        credited=micros_to_usd(row.credited),
        refunded=micros_to_usd(row.refunded),
        failure=row.failure or None,
        created_at=datetime.fromtimestamp(row.created_at / 1e6, UTC).isoformat(),
    )


def present_payment(payment: PaymentState) -> Payment:
    method = {k: v for k, v in payment.method.items() if k != "token"}
    crypto: CryptoDetails | None = None
    if payment.processor == "crypto":
        crypto = CryptoDetails(
            network=method.get("network"),
            token="USDC",  # noqa: S106 - the coin, not a secret
            token_contract=method.get("contract"),
            pay_to=method.get("to"),
            from_wallet=method.get("wallet"),
            amount_units=payment.amount,
            received=micros_to_usd(payment.received),
            expires_at=payment.expires_at.isoformat() if payment.expires_at else None,
            flags=list(payment.flags),
        )
    return Payment(
        id=str(payment.id),
        status=payment.state,
        amount=micros_to_usd(payment.amount),
        currency=payment.currency,
        provider=payment.processor,
        payment_method=method,
        external_id=payment.external_id or None,
        credited=micros_to_usd(payment.credited),
        refunded=micros_to_usd(payment.refunded),
        disputed=micros_to_usd(payment.disputed),
        failure=payment.failure or None,
        next_action_url=payment.next_action_url or None,
        created_at=payment.created_at.isoformat(),
        updated_at=payment.updated_at.isoformat(),
        crypto=crypto,
    )


def present_created(payment: PaymentState) -> CreatedPayment:
    shown = present_payment(payment)
    return CreatedPayment(transaction=shown, **structs.asdict(shown))
