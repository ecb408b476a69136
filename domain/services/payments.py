"""Payment use cases: start a payment, settle it into credits, reverse it, reconcile it.

Money rules stay in the aggregates: a payment's success and the credit grant it causes are
saved in one transaction (``LedgerService.transact``), a refund or dispute and its debit too.
Processor calls happen between transactions, never inside one; every call carries an
idempotency key derived from the payment id, so a retry (by the user, the reconciler or
after a crash) is one effect at the processor as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from domain.credits import CreditAccount
from domain.crypto_amounts import LATE_PAYMENT_WINDOW, TAG_UNITS, ExactAmount, exact_amount_id
from domain.crypto_requests import OpenCryptoRequests, open_crypto_requests_id
from domain.crypto_wallets import NamedWallet, named_wallet_id
from domain.errors import DomainError, IdempotencyConflictError, InvalidArgumentError
from domain.pan import refuse_pan
from domain.payments import Payment, PaymentStateError, payment_id_for
from domain.ports.clock import Clock
from domain.ports.payments import (
    CardDeclinedError,
    CardProcessor,
    ChargeRequest,
    ChargeResult,
    PaymentError,
    PaymentUnavailableError,
    WebhookEvent,
)
from domain.services.ledger import LedgerService

log = logging.getLogger(__name__)
T = TypeVar("T")
CENT = 10_000  # micro-USD


class PaymentNotFoundError(DomainError):
    status = 404
    title = "Payment not found"


class PaymentInProgressError(DomainError):
    """Another request with the same Idempotency-Key is still being processed."""

    status = 409
    title = "Payment in progress"


class ProcessorNotConfiguredError(DomainError):
    status = 400
    title = "Payment provider not available"


class NoExactAmountError(DomainError):
    """Every exact amount tried for a crypto request was taken, or every save lost a race
    (for the amount or the wallet): retry."""

    status = 503
    title = "No exact amount free"


#: Exact amounts tried for one crypto request before giving up (each is free with a
#: probability of at least 1 - live requests of that size / ``TAG_UNITS``).
EXACT_AMOUNT_TRIES = 32


@dataclass(frozen=True)
class CryptoConfig:
    network: str
    chain_id: int
    token: str  # contract address, lower-case
    receiving_address: str
    ttl: timedelta
    max_open: int = 5  # open requests per user (``domain.crypto_requests``)


@dataclass(frozen=True)
class PaymentRequest:
    """A validated request: amount in micro-USD (whole cents), processor, method details."""

    owner: str
    amount: int
    currency: str
    processor: str
    method: dict[str, str]  # type, token | network+wallet, brand/last4 when known
    key: str
    source: str = "user"

    def fingerprint(self) -> str:
        """What must match for a retry with the same key to be the same request."""
        method = {k: v for k, v in sorted(self.method.items()) if k in {"type", "token", "wallet"}}
        text = f"{self.amount}|{self.currency}|{self.processor}|{method}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class PaymentService:
    def __init__(
        self,
        ledger: LedgerService,
        processors: Mapping[str, CardProcessor],
        *,
        clock: Clock,
        crypto: CryptoConfig | None = None,
        wait_for_peer: float = 10.0,
        setup: Mapping[str, str] | None = None,
    ) -> None:
        """``setup``: per processor, what the operator sets to configure it (named in the
        "not configured" error)."""
        self.ledger = ledger
        self.setup = dict(setup or {})
        self.app = ledger.app
        self.processors = dict(processors)
        self.clock = clock
        self.crypto = crypto
        self.wait_for_peer = wait_for_peer

    # ------------------------------------------------------------------ start

    def require(self, processor: str, field: str = "provider") -> None:
        """Refuse a processor this server has not configured, naming what would configure it."""
        configured = [*self.processors, *(["crypto"] if self.crypto else [])]
        if processor in configured:
            return
        setup = self.setup.get(processor)
        raise ProcessorNotConfiguredError(
            f"payment provider {processor!r} is not configured on this server"
            + (f": the operator sets {setup}" if setup else ""),
            field=field,
            available=sorted(configured),
        )

    async def create(self, request: PaymentRequest) -> tuple[Payment, bool]:
        """Start a payment, or find the one this key already started. Returns (payment, new)."""
        self.require(request.processor)
        if request.amount % CENT:
            raise InvalidArgumentError("amount must be whole cents", field="amount")
        refuse_pan(request.key, "Idempotency-Key")  # both are kept in the payment's events
        for value in request.method.values():
            refuse_pan(value, "X-Preferred-Payment")
        payment_id = payment_id_for(request.owner, request.key)
        existing = await asyncio.to_thread(self.find, payment_id)
        if existing is None:
            created = await asyncio.to_thread(self._initiate, request)
            if created is not None:
                return await self._dispatch(created), True
            existing = await asyncio.to_thread(self.get, payment_id)
        return await self._replay(existing, request), False

    def _initiate(self, request: PaymentRequest) -> Payment | None:
        if request.processor == "crypto":
            return self._initiate_crypto(request)
        payment = self._payment(request, request.amount, {}, None, self.clock())
        try:
            self.app.save(payment)
        except IntegrityError:
            return None  # a concurrent request with the same key created it first
        return payment

    def _payment(
        self,
        request: PaymentRequest,
        amount: int,
        extra: Mapping[str, str],
        expires_at: datetime | None,
        now: datetime,
    ) -> Payment:
        return Payment(
            owner=request.owner,
            key=request.key,
            amount=amount,
            currency=request.currency,
            processor=request.processor,
            method={**request.method, **extra},
            fingerprint=request.fingerprint(),
            at=now,
            expires_at=expires_at,
            source=request.source,
        )

    def _initiate_crypto(self, request: PaymentRequest) -> Payment | None:
        """A crypto request with an exact amount of its own (``domain.crypto_amounts``):
        the requested cents plus a random tag, reserved in the same save as the payment, which
        also records the request on its wallet (``domain.crypto_wallets``) and among its
        user's open requests, refused past ``max_open`` (``domain.crypto_requests``)."""
        crypto = self.crypto
        assert crypto is not None  # noqa: S101 - checked by create()
        payment_id = payment_id_for(request.owner, request.key)
        extra = {
            "asset": "usdc",
            "contract": crypto.token,
            "to": crypto.receiving_address,
            "chain_id": str(crypto.chain_id),
        }
        for _ in range(EXACT_AMOUNT_TRIES):
            now = self.clock()
            expires = now + crypto.ttl
            exact = request.amount + 1 + secrets.randbelow(TAG_UNITS)
            until = expires + LATE_PAYMENT_WINDOW
            mine = self._open_requests(request.owner)
            mine.admit(
                str(payment_id), until=expires, now=now, limit=crypto.max_open, is_open=self._open
            )
            reservation = self._reservation(crypto.network, exact, str(payment_id), until, now)
            if reservation is None:
                continue
            payment = self._payment(request, exact, extra, expires, now)
            payment.mark_pending("", now=now)
            wallet = self._named_wallet(crypto.network, request.method.get("wallet", ""))
            wallet.name(str(payment_id), request.owner, until=until, now=now)
            try:
                self.app.save(payment, reservation, wallet, mine)
            except IntegrityError:
                if self.find(payment_id) is not None:
                    return None  # a concurrent request with the same key created it first
                continue  # another request took this amount, or named this wallet, meanwhile
            return payment
        raise NoExactAmountError(
            "could not reserve an exact amount for this request (every one tried was taken, "
            "or too many requests named this wallet at once); retry",
            field="amount",
        )

    def _reservation(
        self, network: str, amount: int, payment_id: str, until: datetime, now: datetime
    ) -> ExactAmount | None:
        """``amount`` reserved for the payment (unsaved), or ``None`` if it names another."""
        found: ExactAmount | None = self._load(exact_amount_id(network, amount))
        if found is None:
            return ExactAmount(network, amount, payment_id, until, now)
        if found.holder(now) is not None:
            return None
        found.reserve(payment_id, until=until, now=now)
        return found

    def _open_requests(self, owner: str) -> OpenCryptoRequests:
        found: OpenCryptoRequests | None = self._load(open_crypto_requests_id(owner))
        return OpenCryptoRequests(owner) if found is None else found

    def _open(self, payment_id: str) -> bool:
        payment = self.find(UUID(payment_id))
        return payment is not None and payment.is_open

    def _named_wallet(self, network: str, wallet: str) -> NamedWallet:
        found: NamedWallet | None = self._load(named_wallet_id(network, wallet))
        return NamedWallet(network, wallet) if found is None else found

    def paid_by_wallet(self, network: str, wallet: str) -> tuple[str, str]:
        """The payment a transfer of any other amount from ``wallet`` pays
        (``NamedWallet.claim``): (payment id, "claimed"), or ("", "ambiguous"/"unmatched")."""
        named: NamedWallet | None = self._load(named_wallet_id(network, wallet))
        if named is None:
            return "", "unmatched"
        return named.claim(self.clock(), lambda payment_id: self.get(UUID(payment_id)).is_open)

    def paid_by_exact_amount(self, network: str, amount: int) -> str | None:
        """The payment a transfer of exactly ``amount`` pays on ``network`` now, if any."""
        found: ExactAmount | None = self._load(exact_amount_id(network, amount))
        return None if found is None else found.holder(self.clock())

    async def _replay(self, payment: Payment, request: PaymentRequest) -> Payment:
        if payment.fingerprint != request.fingerprint():
            raise IdempotencyConflictError(
                "Idempotency-Key was already used with a different request", key=request.key
            )
        deadline = time.monotonic() + self.wait_for_peer
        while payment.state == "initiated" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            payment = await asyncio.to_thread(self.get, payment.id)
        if payment.state == "initiated" and self.clock() - payment.created_at < timedelta(
            seconds=self.wait_for_peer * 3
        ):
            raise PaymentInProgressError(
                "A request with this Idempotency-Key is still being processed; retry shortly",
                payment_id=str(payment.id),
            )
        if payment.state == "initiated":  # its first request died: take it over
            return await self._dispatch(payment)
        return payment

    async def _dispatch(self, payment: Payment) -> Payment:
        """Send a card payment to its processor and record the answer."""
        if payment.processor == "crypto":
            return payment
        processor = self.processors[payment.processor]
        try:
            result = await processor.charge(self._charge_request(payment))
        except CardDeclinedError as exc:
            return await asyncio.to_thread(self._record_failure, payment.id, exc.message)
        except PaymentUnavailableError as exc:
            log.warning("payment %s: %s; the reconciler retries it", payment.id, exc)
            return payment
        except PaymentError as exc:
            return await asyncio.to_thread(self._record_failure, payment.id, exc.message)
        return await asyncio.to_thread(self.apply_charge, payment.id, result)

    @staticmethod
    def _charge_request(payment: Payment) -> ChargeRequest:
        return ChargeRequest(
            payment_id=str(payment.id),
            user_id=payment.owner,
            amount_cents=payment.amount // CENT,
            currency=payment.currency.lower(),
            payment_method=payment.method.get("token", ""),
            idempotency_key=f"gpuproxy-payment-{payment.id}",
            description="GPU Proxy credits",
        )

    # --------------------------------------------------------------- settle

    def apply_charge(self, payment_id: UUID, result: ChargeResult, event_id: str = "") -> Payment:
        """Record what the processor says about a charge (from its answer or a webhook)."""
        if result.status == "succeeded":
            return self._settle(
                payment_id,
                external_id=result.external_id,
                cents=result.amount_cents,
                brand=result.card_brand,
                last4=result.card_last4,
                event_id=event_id,
            )
        if result.status == "failed":
            return self._record_failure(
                payment_id, result.failure_message or "payment failed", result.external_id, event_id
            )

        def pending(payment: Payment, now: datetime) -> None:
            payment.mark_pending(
                result.external_id, next_action_url=result.next_action_url, now=now
            )

        return self._update(payment_id, pending, event_id)

    def _settle(
        self,
        payment_id: UUID,
        *,
        external_id: str,
        cents: int,
        brand: str = "",
        last4: str = "",
        event_id: str = "",
    ) -> Payment:
        def run(account: CreditAccount, now: datetime) -> tuple[Payment, Payment]:
            payment = self.get(payment_id)
            if not payment.applied_webhook(event_id):
                credited = min(cents * CENT, payment.amount) if cents else payment.amount
                if payment.succeed(
                    external_id=external_id, credited=credited, brand=brand, last4=last4, now=now
                ):
                    account.grant(
                        credited,
                        key=f"payment:{payment.id}",
                        now=now,
                        source="auto_renew" if payment.source == "auto_renew" else "payment",
                        reference=str(payment.id),
                        reason=f"{payment.processor} payment",
                        actor=payment.owner,
                    )
                payment.note_webhook(event_id)
            return payment, payment

        return self._transact(payment_id, run)

    def _record_failure(
        self, payment_id: UUID, reason: str, external_id: str = "", event_id: str = ""
    ) -> Payment:
        def fail(payment: Payment, now: datetime) -> None:
            payment.fail(reason, now=now, external_id=external_id)

        return self._update(payment_id, fail, event_id)

    def apply_webhook(self, event: WebhookEvent, payment_id: UUID) -> Payment:
        """Apply a verified processor event once (by its id); unknown types are ignored."""
        if event.type == "payment_intent.succeeded":
            return self._settle(
                payment_id,
                external_id=event.payment_intent_id,
                cents=event.amount_cents,
                brand=event.card_brand,
                last4=event.card_last4,
                event_id=event.event_id,
            )
        if event.type == "payment_intent.payment_failed":
            return self._record_failure(
                payment_id,
                event.failure_message or "payment failed",
                event.payment_intent_id,
                event.event_id,
            )
        if event.type == "charge.refunded":
            return self._reverse_to(payment_id, "refund", event.amount_cents * CENT, event)
        if event.type == "charge.dispute.created":
            return self._reverse(
                payment_id, "dispute", event.amount_cents * CENT, event.event_id, event.event_id
            )
        return self.get(payment_id)

    # ------------------------------------------------------------- reversals

    async def refund(self, payment_id: UUID, amount: int | None, *, actor: str) -> Payment:
        """Admin refund: through the processor for cards, recorded by hand for crypto."""
        payment = await asyncio.to_thread(self.get, payment_id)
        amount = payment.reversible if amount is None else amount
        if amount % CENT:
            raise InvalidArgumentError("amount must be whole cents", field="amount")
        if not 0 < amount <= payment.reversible:
            raise InvalidArgumentError(
                "nothing to refund" if payment.reversible == 0 else "amount exceeds refundable",
                field="amount",
                refundable=payment.reversible,
            )
        reference = f"manual:{actor}"
        if payment.processor != "crypto":
            processor = self.processors[payment.processor]
            key = f"gpuproxy-refund-{payment.id}-{payment.refunded}-{amount}"
            result = await processor.refund(
                payment.external_id, amount // CENT, idempotency_key=key
            )
            if result.status == "failed":
                raise PaymentStateError(
                    "The processor refused the refund", refund=result.external_id
                )
            reference = result.external_id
        return await asyncio.to_thread(
            self._reverse_to, payment_id, "refund", payment.refunded + amount, None, reference
        )

    def _reverse_to(
        self,
        payment_id: UUID,
        kind: str,
        total: int,
        event: WebhookEvent | None,
        reference: str = "",
    ) -> Payment:
        """Bring the refunded total up to ``total`` (refund notices carry the running total)."""
        event_id = event.event_id if event else ""
        return self._reverse(
            payment_id, kind, None, event_id, reference or event_id, refunded_total=total
        )

    def _reverse(
        self,
        payment_id: UUID,
        kind: str,
        amount: int | None,
        event_id: str,
        reference: str,
        *,
        refunded_total: int = 0,
    ) -> Payment:
        """Record a reversal and debit the account as far as it allows, in one save."""

        def run(account: CreditAccount, now: datetime) -> tuple[Payment, Payment]:
            payment = self.get(payment_id)
            if payment.applied_webhook(event_id):
                return payment, payment
            wanted = (
                min(refunded_total, payment.credited) - payment.refunded
                if amount is None
                else amount
            )
            taken = min(wanted, payment.reversible)
            if taken > 0:
                debited = min(taken, max(0, account.available + account.cap))
                if debited:
                    account.debit(
                        debited,
                        key=f"{kind}:{payment.id}:{payment.refunded + payment.disputed}",
                        now=now,
                        kind=kind,
                        reference=str(payment.id),
                        reason=f"{payment.processor} {kind}",
                        actor="payments",
                    )
                payment.reverse(kind, taken, debited=debited, reference=reference, now=now)
            payment.note_webhook(event_id)
            return payment, payment

        return self._transact(payment_id, run)

    # ----------------------------------------------------------------- crypto

    def record_transfer(
        self, payment_id: UUID, transfer_ref: str, amount: int, *, block: int
    ) -> tuple[str, Payment]:
        """Apply one confirmed chain transfer to a crypto payment (once per transfer)."""

        def run(account: CreditAccount, now: datetime) -> tuple[tuple[str, Payment], Payment]:
            payment = self.get(payment_id)
            kind, credit = payment.record_transfer(transfer_ref, amount, block=block, now=now)
            if credit and kind in {"exact", "overpaid", "late"}:
                payment.succeed(external_id=transfer_ref, credited=credit, now=now)
            if credit:
                account.grant(
                    credit,
                    key=f"payment:{payment.id}:{transfer_ref}",
                    now=now,
                    source="payment",
                    reference=str(payment.id),
                    reason=f"crypto payment ({kind})",
                    actor=payment.owner,
                )
            return (kind, payment), payment

        return self._transact(payment_id, run)

    def expire(self, payment_id: UUID) -> Payment:
        """Close a crypto request past its deadline; what was received (underpaid) is credited."""

        def run(account: CreditAccount, now: datetime) -> tuple[Payment, Payment]:
            payment = self.get(payment_id)
            if not payment.is_open or payment.expires_at is None or payment.expires_at > now:
                return payment, payment
            if payment.received:
                payment.succeed(external_id="", credited=payment.received, now=now)
                account.grant(
                    payment.received,
                    key=f"payment:{payment.id}",
                    now=now,
                    source="payment",
                    reference=str(payment.id),
                    reason="crypto payment (underpaid)",
                    actor=payment.owner,
                )
            else:
                payment.expire(now)
            return payment, payment

        return self._transact(payment_id, run)

    # -------------------------------------------------------------- reconcile

    async def reconcile(self, payment: Payment) -> Payment:
        """Ask the processor again about a payment left open (crash, outage, 3-D Secure)."""
        if payment.processor == "crypto":
            due = payment.expires_at is not None and payment.expires_at <= self.clock()
            return await asyncio.to_thread(self.expire, payment.id) if due else payment
        if payment.state == "initiated":
            return await self._dispatch(payment)  # same idempotency key: the first answer
        processor = self.processors.get(payment.processor)
        if processor is None or not payment.external_id:
            return payment
        try:
            result = await processor.status(payment.external_id)
        except PaymentError as exc:
            log.warning("payment %s: status check failed: %s", payment.id, exc)
            return payment
        if result.status == "requires_action":
            return payment
        return await asyncio.to_thread(self.apply_charge, payment.id, result)

    # ------------------------------------------------------------------ reads

    def _load(self, aggregate_id: UUID) -> Any:
        """The aggregate with this id, or ``None``."""
        try:
            return self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def find(self, payment_id: UUID) -> Payment | None:
        payment = self._load(payment_id)
        return payment if isinstance(payment, Payment) else None

    def get(self, payment_id: UUID) -> Payment:
        payment = self.find(payment_id)
        if payment is None:
            raise PaymentNotFoundError("No such payment", payment_id=str(payment_id))
        return payment

    # ---------------------------------------------------------------- helpers

    def _transact(
        self, payment_id: UUID, run: Callable[[CreditAccount, datetime], tuple[T, Payment]]
    ) -> T:
        owner = self.get(payment_id).owner
        return self.ledger.transact(owner, run, clock=self.clock)

    def _update(
        self, payment_id: UUID, change: Callable[[Payment, datetime], Any], event_id: str
    ) -> Payment:
        """A payment-only change (no money moves), once per processor event."""
        for _ in range(10):
            payment = self.get(payment_id)
            if not payment.applied_webhook(event_id):
                change(payment, self.clock())
                payment.note_webhook(event_id)
            try:
                self.app.save(payment)
            except IntegrityError:
                continue
            return payment
        raise PaymentStateError("Too many concurrent updates to this payment; retry")
