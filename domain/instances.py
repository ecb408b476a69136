"""GpuInstance: one rented machine, its lifecycle and its metering.

Lifecycle: requested → provisioning → running → stopping → terminated, or failed. Billing is
per second at the price captured when it was rented: the amount due up to ``t`` is
``floor(price_per_hour * seconds_running(t) / 3600)`` in micro-USD, computed from the start
each time, so rounding never drifts. Each ``Metered`` event records the total billed so far.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.holds import is_rental_hold, next_rental_hold_id

MICROS_PER_HOUR = 3_600_000_000  # microseconds in an hour
LIVE_STATES = frozenset({"requested", "provisioning", "running", "stopping"})


class InstanceStateError(DomainError):
    """The instance is not in a state that allows this."""

    status = 409
    title = "Instance state conflict"


def due_between(price_per_hour: int, start: datetime, end: datetime) -> int:
    """Micro-USD due for running from ``start`` to ``end`` at ``price_per_hour``, floored."""
    if end <= start:
        return 0
    delta = end - start
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return price_per_hour * micros // MICROS_PER_HOUR


class GpuInstance(Aggregate):
    """A rental, owned by one user, billed to their CreditAccount."""

    @staticmethod
    def create_id(instance_id: UUID, **_: Any) -> UUID:
        return instance_id

    @event("Requested")
    def __init__(
        self,
        instance_id: UUID,
        owner: str,
        provider: str,
        offer_id: str,
        gpu_model: str,
        num_gpus: int,
        price_per_hour: int,
        provider_price_per_hour: int,
        hold_id: str,
        image: str,
        at: datetime,
        vram_gb: float = 0.0,
        credential: str = "",
        address: str = "",
    ) -> None:
        self.owner = owner
        # who rented it (usage sessions): ``apikey:<id>``/``session:<id>``, never a secret, and
        # the client's address; "" for a rental without a caller or recorded before they were kept
        self.credential = credential
        self.address = address
        self.vram_gb = vram_gb  # per GPU (0 in events recorded before it was kept)
        self.provider = provider
        self.offer_id = offer_id
        self.gpu_model = gpu_model
        self.num_gpus = num_gpus
        self.price_per_hour = price_per_hour
        self.provider_price_per_hour = provider_price_per_hour
        self.hold_id = hold_id
        self.image = image
        self.state = "requested"
        self.provider_instance_id: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.requested_at = at
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.billed = 0
        self.billed_until: datetime | None = None
        self.reason = ""
        self.spend_blocked = False

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def owns_hold(self) -> bool:
        """True if the current hold is this rental's own (not a reservation's shared hold)."""
        return is_rental_hold(self.id, self.hold_id)

    def next_hold_id(self) -> str:
        """The id of the hold a renewal places (``domain.holds.next_rental_hold_id``)."""
        return next_rental_hold_id(self.id, self.hold_id)

    def due(self, until: datetime) -> int:
        """What running up to ``until`` costs in all (0 before it started)."""
        if self.started_at is None:
            return 0
        end = min(until, self.ended_at) if self.ended_at else until
        return due_between(self.price_per_hour, self.started_at, end)

    # --------------------------------------------------------------- commands

    def mark_provisioning(self, provider_instance_id: str, *, now: datetime) -> None:
        if self.state != "requested":
            raise InstanceStateError(f"cannot provision an instance that is {self.state}")
        self._provisioning(provider_instance_id=provider_instance_id, at=now)

    def mark_running(self, host: str | None, port: int | None, *, now: datetime) -> bool:
        """Record that the provider reports it running; False if already known."""
        if self.state == "running":
            return False
        if self.state not in {"requested", "provisioning"}:
            raise InstanceStateError(f"cannot start an instance that is {self.state}")
        self._running(host=host, port=port, at=now)
        return True

    def mark_failed(self, reason: str, *, now: datetime) -> None:
        if not self.is_live:
            raise InstanceStateError(f"instance is already {self.state}")
        self._failed(reason=reason[:500], ended_at=self.ended_at or now, at=now)

    def request_stop(self, reason: str, actor: str, *, now: datetime) -> bool:
        """Ask for it to stop; False if it is already stopping or ended."""
        if self.state in {"stopping", "terminated", "failed"}:
            return False
        self._stop_requested(reason=reason[:500], actor=actor, at=now)
        return True

    def mark_terminated(self, reason: str, *, now: datetime) -> None:
        if self.state in {"terminated", "failed"}:
            raise InstanceStateError(f"instance is already {self.state}")
        self._terminated(reason=self.reason or reason[:500], ended_at=self.ended_at or now, at=now)

    def block_spend(self, reason: str, *, now: datetime) -> bool:
        """GUARDRAILS_ACTION=block: record (once) that it runs on without new funds."""
        if self.spend_blocked:
            return False
        self._spend_blocked(reason=reason[:500], at=now)
        return True

    def record_metering(self, total: int, until: datetime, hold_id: str) -> None:
        """Record that everything up to ``until`` (``total`` in all) is charged."""
        if total < self.billed:
            raise InstanceStateError("billed total cannot go down")
        self._metered(total=total, until=until, hold_id=hold_id)

    # ------------------------------------------------------------------ apply

    @event("Provisioning")
    def _provisioning(self, provider_instance_id: str, at: datetime) -> None:
        self.state = "provisioning"
        self.provider_instance_id = provider_instance_id

    @event("Running")
    def _running(self, host: str | None, port: int | None, at: datetime) -> None:
        self.state = "running"
        self.host, self.port = host, port
        self.started_at = at
        self.billed_until = at

    @event("Failed")
    def _failed(self, reason: str, ended_at: datetime, at: datetime) -> None:
        self.state = "failed"
        self.reason = reason
        self.ended_at = ended_at

    @event("StopRequested")
    def _stop_requested(self, reason: str, actor: str, at: datetime) -> None:
        self.state = "stopping"
        self.reason = reason
        self.ended_at = at  # billing stops when the user asks, not when the provider obeys

    @event("Terminated")
    def _terminated(self, reason: str, ended_at: datetime, at: datetime) -> None:
        self.state = "terminated"
        self.reason = reason
        self.ended_at = ended_at

    @event("SpendBlocked")
    def _spend_blocked(self, reason: str, at: datetime) -> None:
        self.spend_blocked = True
        self.reason = reason

    @event("Metered")
    def _metered(self, total: int, until: datetime, hold_id: str) -> None:
        self.billed = total
        self.billed_until = until
        self.hold_id = hold_id
