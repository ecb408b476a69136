"""ExactAmount: a USDC amount, to the unit, that names one crypto payment request.

A transfer on the chain says only who sent it and how much, and the sender may be an
exchange's hot wallet that many users share. So each crypto request is given an amount that no
other payable request on its network has: the requested whole cents plus 1 to ``TAG_UNITS``
units (USDC units are micro-USD, so under ten cents, credited like the rest). A transfer of
exactly that amount pays that request, whichever wallet sent it. The amount stays reserved
while the request can still be paid, late payments included (``until``); after that it may
name a new request.

The id is derived from the network and the amount, so every replica finds the same aggregate:
two requests reserving one amount at once conflict on its version, and one of them picks
another amount.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

EXACT_AMOUNT_NAMESPACE = UUID("6f1f6d0e-3c8a-4f55-9a51-0b7f3e2d9c41")
TAG_UNITS = 99_999  # the largest tag: 0.099999 USDC
#: How long after its deadline a request still takes a transfer (flagged "late").
LATE_PAYMENT_WINDOW = timedelta(days=7)


def exact_amount_id(network: str, amount: int) -> UUID:
    return uuid5(EXACT_AMOUNT_NAMESPACE, f"{network}\n{amount}")


class AmountTakenError(DomainError):
    """Another request can still be paid with this exact amount."""

    status = 409
    title = "Exact amount taken"


class ExactAmount(Aggregate):
    @staticmethod
    def create_id(network: str, amount: int, **_: Any) -> UUID:
        return exact_amount_id(network, amount)

    @event("Reserved")
    def __init__(
        self, network: str, amount: int, payment_id: str, until: datetime, at: datetime
    ) -> None:
        self.network = network
        self.amount = amount
        self.payment_id = payment_id
        self.until = until

    def holder(self, now: datetime) -> str | None:
        """The payment this amount pays at ``now``, if any."""
        return self.payment_id if now < self.until else None

    def reserve(self, payment_id: str, *, until: datetime, now: datetime) -> None:
        """Name a new request with this amount, once the last one can no longer be paid."""
        if self.holder(now) not in (None, payment_id):
            raise AmountTakenError("this exact amount names another open request")
        self._reassigned(payment_id=payment_id, until=until, at=now)

    @event("Reassigned")
    def _reassigned(self, payment_id: str, until: datetime, at: datetime) -> None:
        self.payment_id = payment_id
        self.until = until
