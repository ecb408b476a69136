"""Payment: one attempt to fund a user's credits, from request to settlement and reversal.

initiated → pending (waiting on 3-D Secure, a processor, or a chain transfer)
          → succeeded (credits granted to the CreditAccount in the same save)
          | failed | expired (crypto request past its deadline, nothing received)
succeeded → refunded / disputed, in part or whole (credits debited as far as the account
allows; what could not be taken back is recorded as a shortfall).

The id is derived from the owner and the request's idempotency key, so a retried request
finds the payment its first try created. Crypto payments also record every transfer seen
(a transfer is applied once, by ``tx_hash:log_index``). Card data never reaches an event:
only the brand and last four digits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError, InvalidArgumentError

PAYMENT_NAMESPACE = UUID("1d3c1f7a-5b6e-4a43-9c0f-2f5d6a7b8c90")
PROCESSORS = ("stripe", "crypto", "afterdark")
OPEN_STATES = frozenset({"initiated", "pending"})
MAX_WEBHOOKS_KEPT = 200


def payment_id_for(owner: str, key: str) -> UUID:
    """The payment a (user, Idempotency-Key) pair names, on every replica."""
    return uuid5(PAYMENT_NAMESPACE, f"{owner}\n{key}")


class PaymentStateError(DomainError):
    """The payment cannot take this step in its current state."""

    status = 409
    title = "Payment state conflict"


class Payment(Aggregate):
    @staticmethod
    def create_id(owner: str, key: str, **_: Any) -> UUID:
        return payment_id_for(owner, key)

    @event("Initiated")
    def __init__(
        self,
        owner: str,
        key: str,
        amount: int,
        currency: str,
        processor: str,
        method: dict[str, str],
        fingerprint: str,
        at: datetime,
        expires_at: datetime | None = None,
        source: str = "user",
    ) -> None:
        if processor not in PROCESSORS:
            raise InvalidArgumentError(f"unknown processor {processor!r}", field="provider")
        self.owner = owner
        self.key = key
        self.amount = amount
        self.currency = currency
        self.processor = processor
        self.method = method  # e.g. {"type": "card", "brand": "visa", "last4": "4242"}
        self.fingerprint = fingerprint
        self.created_at = at
        self.expires_at = expires_at
        self.source = source  # "user" | "auto_renew"
        self.state = "initiated"
        self.external_id = ""
        self.next_action_url = ""
        self.failure = ""
        self.credited = 0
        self.refunded = 0
        self.disputed = 0
        self.shortfall = 0
        self.received = 0
        self.flags: list[str] = []  # "underpaid", "overpaid", "late", "extra"
        self.transfers: dict[str, int] = {}  # "tx:log" -> amount
        self.webhooks: list[str] = []  # processor event ids applied, newest last
        self.updated_at = at

    # ------------------------------------------------------------------ queries

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def reversible(self) -> int:
        """How much of the credited amount can still be refunded or disputed."""
        return self.credited - self.refunded - self.disputed

    def applied_webhook(self, event_id: str) -> bool:
        return event_id in self.webhooks

    # ----------------------------------------------------------------- commands

    def mark_pending(self, external_id: str, *, next_action_url: str = "", now: datetime) -> bool:
        if self.state != "initiated":
            return False
        self._pending(external_id=external_id, next_action_url=next_action_url, at=now)
        return True

    def succeed(
        self,
        *,
        external_id: str,
        credited: int,
        brand: str = "",
        last4: str = "",
        now: datetime,
    ) -> bool:
        """Settle: the caller grants ``credited`` to the account in the same save."""
        if self.state == "succeeded":
            return False
        if self.state in {"refunded", "disputed"}:
            raise PaymentStateError("Payment already settled", state=self.state)
        if credited <= 0:
            raise InvalidArgumentError("credited amount must be positive", field="amount")
        self._succeeded(
            external_id=external_id or self.external_id,
            credited=credited,
            brand=brand,
            last4=last4,
            at=now,
        )
        return True

    def fail(self, reason: str, *, now: datetime, external_id: str = "") -> bool:
        """A failure after success is stale (out-of-order notice) and is ignored."""
        if not self.is_open:
            return False
        self._failed(reason=reason[:500], external_id=external_id or self.external_id, at=now)
        return True

    def expire(self, now: datetime) -> bool:
        if not self.is_open or self.processor != "crypto":
            return False
        self._expired(at=now)
        return True

    def reverse(
        self, kind: str, amount: int, *, debited: int, reference: str, now: datetime
    ) -> None:
        """Record a refund or dispute of ``amount``; ``debited`` is what the account gave back."""
        if kind not in {"refund", "dispute"}:
            raise InvalidArgumentError(f"unknown reversal {kind!r}", field="kind")
        if self.state not in {"succeeded", "refunded", "disputed"}:
            raise PaymentStateError("Only a settled payment can be reversed", state=self.state)
        if not 0 < amount <= self.reversible:
            raise InvalidArgumentError(
                "amount must be positive and at most what was credited and not yet reversed",
                field="amount",
                reversible=self.reversible,
            )
        whole = amount == self.reversible
        self._reversed(
            kind=kind,
            amount=amount,
            debited=debited,
            reference=reference[:200],
            state=("refunded" if kind == "refund" else "disputed") if whole else self.state,
            at=now,
        )

    def note_webhook(self, event_id: str) -> None:
        if event_id and not self.applied_webhook(event_id):
            self._webhook_applied(event_id=event_id)

    def record_transfer(
        self, transfer_ref: str, amount: int, *, block: int, now: datetime
    ) -> tuple[str, int]:
        """A chain transfer for this request. Returns (classification, amount to credit).

        Applied once per ``transfer_ref``. While open, transfers add up; once they reach the
        amount the payment succeeds with everything received (overpaid flagged). A transfer
        after the deadline, or after success, is credited too and flagged ("late"/"extra"):
        money received is never dropped.
        """
        if transfer_ref in self.transfers:
            return "duplicate", 0
        if self.state in {"succeeded", "refunded", "disputed"}:
            kind, credit = "extra", amount
        elif self.state in {"expired", "failed"}:
            kind, credit = "late", self.received + amount
        elif self.received + amount < self.amount:
            kind, credit = "underpaid", 0
        else:
            total = self.received + amount
            kind, credit = ("overpaid" if total > self.amount else "exact"), total
        self._transfer_seen(ref=transfer_ref, amount=amount, block=block, kind=kind, at=now)
        return kind, credit

    # ------------------------------------------------------------------- events

    @event("Pending")
    def _pending(self, external_id: str, next_action_url: str, at: datetime) -> None:
        self.state = "pending"
        self.external_id = external_id
        self.next_action_url = next_action_url
        self.updated_at = at

    @event("Succeeded")
    def _succeeded(
        self, external_id: str, credited: int, brand: str, last4: str, at: datetime
    ) -> None:
        self.state = "succeeded"
        self.external_id = external_id
        self.credited += credited
        self.failure = ""
        self.next_action_url = ""
        if brand or last4:
            self.method = {**self.method, "brand": brand, "last4": last4}
        self.updated_at = at

    @event("Failed")
    def _failed(self, reason: str, external_id: str, at: datetime) -> None:
        self.state = "failed"
        self.failure = reason
        self.external_id = external_id
        self.updated_at = at

    @event("Expired")
    def _expired(self, at: datetime) -> None:
        self.state = "expired"
        self.updated_at = at

    @event("Reversed")
    def _reversed(
        self, kind: str, amount: int, debited: int, reference: str, state: str, at: datetime
    ) -> None:
        if kind == "refund":
            self.refunded += amount
        else:
            self.disputed += amount
        self.shortfall += amount - debited
        self.state = state
        self.updated_at = at

    @event("WebhookApplied")
    def _webhook_applied(self, event_id: str) -> None:
        self.webhooks.append(event_id)
        del self.webhooks[:-MAX_WEBHOOKS_KEPT]

    @event("TransferSeen")
    def _transfer_seen(self, ref: str, amount: int, block: int, kind: str, at: datetime) -> None:
        self.transfers[ref] = amount
        self.received += amount
        if kind == "extra":
            self.credited += amount
        if kind not in {"exact", "duplicate"} and kind not in self.flags:
            self.flags.append(kind)
        self.updated_at = at
