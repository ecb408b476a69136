"""Payment ports: what card processors (Stripe, AfterDark) and a blockchain reader offer.

Adapters live in ``infrastructure/payments/``; tests drive them against local fakes that
follow the real APIs. Amounts crossing these ports are integer cents (card processors) or
integer token base units (USDC has 6 decimals, so 1 unit = 1 micro-USD); never floats.
No card number or CVC ever crosses a port: card processors get a payment-method token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

ChargeStatus = Literal["succeeded", "pending", "requires_action", "failed"]


@dataclass(frozen=True)
class ChargeRequest:
    """Charge ``amount_cents`` to a saved payment method, at most once per idempotency key."""

    payment_id: str  # our Payment aggregate id (sent as metadata)
    user_id: str
    amount_cents: int
    currency: str  # lower-case ISO code, "usd"
    payment_method: str  # a processor token such as "pm_card_visa"; never a card number
    idempotency_key: str  # derived from ours; the processor replays its first answer
    description: str = ""


@dataclass(frozen=True)
class ChargeResult:
    """A processor's view of one charge."""

    external_id: str  # e.g. Stripe PaymentIntent id "pi_…"
    status: ChargeStatus
    amount_cents: int
    currency: str
    failure_code: str = ""
    failure_message: str = ""
    card_brand: str = ""  # "visa", "mastercard", … (never the number)
    card_last4: str = ""
    next_action_url: str = ""  # 3-D Secure: where the customer confirms
    charge_id: str = ""  # Stripe "ch_…" when known (refunds, disputes refer to it)


@dataclass(frozen=True)
class RefundResult:
    external_id: str  # e.g. Stripe "re_…"
    status: Literal["succeeded", "pending", "failed"]
    amount_cents: int


@dataclass(frozen=True)
class WebhookEvent:
    """A verified processor notification, reduced to what the ledger needs."""

    event_id: str  # "evt_…": each is applied once
    type: str  # e.g. "payment_intent.succeeded"
    payment_intent_id: str  # the charge's external id ("" when the event has none)
    amount_cents: int = 0  # succeeded/refunded/disputed amount for the event
    failure_message: str = ""
    card_brand: str = ""
    card_last4: str = ""
    created: int = 0  # epoch seconds, as the processor stamped it
    metadata: dict[str, str] = field(default_factory=dict)


class PaymentError(Exception):
    """A processor call failed. ``retryable``: the same call may work later."""

    retryable = False

    def __init__(self, processor: str, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(f"{processor}: {message}")
        self.processor = processor
        self.message = message
        self.code = code
        self.status = status


class CardDeclinedError(PaymentError):
    """The card was declined (Stripe ``card_error``); the payment fails, nothing is retried."""


class InvalidPaymentRequestError(PaymentError):
    """The processor refused the request as malformed (Stripe ``invalid_request_error``)."""


class PaymentAuthError(PaymentError):
    """Our key is wrong or missing (Stripe 401)."""


class PaymentUnavailableError(PaymentError):
    """Network error, timeout, 429 or 5xx after bounded retries."""

    retryable = True


class InvalidWebhookError(Exception):
    """A webhook whose signature is missing, wrong or stale, or whose body is not an event."""


class CardProcessor(Protocol):
    """Stripe or AfterDark."""

    @property
    def name(self) -> str: ...

    async def charge(self, request: ChargeRequest) -> ChargeResult: ...

    async def status(self, external_id: str) -> ChargeResult: ...

    async def refund(
        self, external_id: str, amount_cents: int, *, idempotency_key: str
    ) -> RefundResult: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class TokenTransfer:
    """One ERC-20 ``Transfer`` log, as read from the chain."""

    tx_hash: str  # 0x-prefixed, lower-case
    log_index: int
    block_number: int
    token: str  # contract address, lower-case
    sender: str  # lower-case
    recipient: str  # lower-case
    amount: int  # token base units (USDC: 6 decimals = micro-USD)


class ChainReader(Protocol):
    """Read-only access to one EVM chain through standard Ethereum JSON-RPC."""

    async def chain_id(self) -> int: ...

    async def block_number(self) -> int: ...

    async def transfers(
        self, token: str, recipient: str, from_block: int, to_block: int
    ) -> list[TokenTransfer]:
        """``Transfer`` logs of ``token`` to ``recipient`` in the inclusive block range."""
        ...

    async def aclose(self) -> None: ...
