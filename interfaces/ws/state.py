"""Attaches current state to stream events: an account's balance and window totals, an
instance's status and cost so far, a reservation's members.

State is read from the aggregates (the event store), not from projections, so a message never
shows a state older than the event it carries. It is the state when the message was prepared,
not as of that event; each stream is read once per batch, and only if someone subscribed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain.errors import DomainError
from domain.money import micros_to_usd
from domain.services.ledger import AccountView
from infrastructure.feed.owners import OwnerIndex
from interfaces.presenters.instances import instance_json, reservation_json
from interfaces.spending_view import spending_json as report_json
from interfaces.ws.topics import Prepared, Subscription, topics_of, visible
from projections.base import Recorded

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)


def account_json(view: AccountView) -> dict[str, Any]:
    return {
        "credits_remaining": micros_to_usd(view.balance),
        "credits_available": micros_to_usd(view.available),
        "credits_held": micros_to_usd(view.held),
        "credits_total": micros_to_usd(view.total_granted),
        "credits_overage": micros_to_usd(view.overage),
        "credits_cap": micros_to_usd(view.cap),
        "version": view.version,
    }


def spending_json(view: AccountView) -> dict[str, Any]:
    """The account's spending report (the same as ``GET /api/v1/guardrails/spending``)."""
    return report_json(view.spending)


class StatePreparer:
    """Turns recorded events into ``Prepared`` ones for a set of subscriptions (a thread's work)."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.owners = OwnerIndex(container.app)

    def prepare(self, events: Sequence[Recorded], subs: Sequence[Subscription]) -> list[Prepared]:
        """Every event that has a topic, with its owner; state is attached (read) only for
        those one of ``subs`` will see. None is left out: a session that turns live while
        this runs gets the batch too (without state) rather than a gap."""
        out: list[Prepared] = []
        cache: dict[tuple[str, str], dict[str, Any]] = {}
        for event in events:
            topics = topics_of(event.name)
            if not topics:
                continue
            prepared = Prepared(event, self.owners.owner_of(event), topics)
            if any(visible(prepared, sub) for sub in subs):
                self._attach(prepared, cache)
            out.append(prepared)
        return out

    def _attach(self, p: Prepared, cache: dict[tuple[str, str], dict[str, Any]]) -> None:
        stream = p.event.name.partition(".")[0]
        key = (stream, str(p.event.originator_id))
        if key not in cache:
            try:
                cache[key] = self._state(stream, p.event.originator_id, p.owner)
            except DomainError:
                cache[key] = {}
            except Exception:
                log.exception("reading state for %s %s failed", stream, key[1])
                cache[key] = {}
        p.extra.update(cache[key])

    def _state(self, stream: str, stream_id: UUID, owner: str | None) -> dict[str, Any]:
        if stream == "CreditAccount" and owner:
            view = self.c.ledger.account(owner)
            return {"account": account_json(view), "spending": spending_json(view)}
        if stream == "GpuInstance":
            gpu = self.c.marketplace.get(stream_id)
            return {"instance": instance_json(gpu, self.c.ledger.clock())}
        if stream == "Reservation":
            return {"reservation": reservation_json(self.c.marketplace.get_reservation(stream_id))}
        return {}
