"""Marketplace use cases: catalog, rent, poll, meter, destroy.

Every money step is a ``CreditAccount`` command and every lifecycle step a ``GpuInstance``
command; when both change they are saved in one transaction (optimistic concurrency on both,
bounded retries). Provider calls happen between those transactions, never inside them.
A change into or out of ``running`` calls ``on_instances_changed(owner)`` once it is saved,
before the command answers (the proxy's caches on every process listen to it).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from domain import metering
from domain.credits import CreditAccount
from domain.errors import DomainError, InvalidArgumentError
from domain.holds import rental_hold_id
from domain.instances import GpuInstance
from domain.marketplace import (
    GpuProvider,
    Offer,
    OfferQuery,
    OfferUnavailableError,
    ProviderAuthError,
    ProviderError,
    RentRequest,
)
from domain.ports.clock import Clock
from domain.reservations import MAX_GPUS, GpuBudget, Reservation, plan
from domain.services.ledger import LedgerService
from domain.usage import Caller

T = TypeVar("T")
SORTS: dict[str, Callable[[Offer], tuple[Any, ...]]] = {
    "price": lambda o: (o.price_per_hour, o.provider, o.offer_id),
    "-price": lambda o: (-o.price_per_hour, o.provider, o.offer_id),
    "vram": lambda o: (-o.vram_gb * o.num_gpus, o.price_per_hour, o.offer_id),
    "reliability": lambda o: (-o.reliability, o.price_per_hour, o.offer_id),
    "gpus": lambda o: (-o.num_gpus, o.price_per_hour, o.offer_id),
}
INSTANCE_NAMESPACE = UUID("3c5e2a14-9b1f-4f3e-8d7a-2f6b1c0e9a55")
RESERVE_PARALLEL_RENTS = 4  # a reservation's rents in flight at once


class OfferNotFoundError(DomainError):
    status = 404
    title = "Offer not found"


class InstanceNotFoundError(DomainError):
    status = 404
    title = "Instance not found"


class ProviderFailedError(DomainError):
    """The provider refused or failed; nothing was rented and the hold was released."""

    status = 502
    title = "Provider error"


@dataclass(frozen=True)
class Catalog:
    offers: list[Offer]
    errors: dict[str, str]


@dataclass(frozen=True)
class RentSpec:
    image: str = "nvidia/cuda:12.4.1-base-ubuntu22.04"
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = (8000,)
    disk_gb: int = 20
    onstart: str = ""


@dataclass(frozen=True)
class MarketplaceConfig:
    markup_ppm: int = 0  # price markup in parts per million (PRICE_MARKUP=0.10 → 100_000)
    hold_seconds: int = 3600  # how much running time one credit hold covers
    renew_below_seconds: int = 600  # renew the hold when less than this much is left
    cache_ttl: float = 30.0
    search_timeout: float = 15.0
    guardrails_action: str = "stop"  # or "block"
    spread: str = "round_robin"  # how a reservation's GPUs are spread over offers


class MarketplaceService:
    def __init__(
        self,
        ledger: LedgerService,
        providers: Mapping[str, GpuProvider],
        *,
        clock: Clock,
        config: MarketplaceConfig | None = None,
        on_instances_changed: Callable[[str], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.on_instances_changed = on_instances_changed
        self.app = ledger.app
        for key, adapter in providers.items():
            if key != adapter.name:  # instances record the name; lookups use the key
                raise ValueError(f"provider registered as {key!r} calls itself {adapter.name!r}")
        self.providers = dict(providers)
        self.clock = clock
        self.config = config or MarketplaceConfig()
        self._cache: dict[tuple[str, OfferQuery], tuple[float, list[Offer]]] = {}

    # ----------------------------------------------------------------- catalog

    def price(self, provider_price: int) -> int:
        """Our price per hour: the provider's plus markup, rounded up to a micro-USD."""
        return math.ceil(provider_price * (1_000_000 + self.config.markup_ppm) / 1_000_000)

    def provider(self, name: str) -> GpuProvider:
        found = self.providers.get(name)
        if found is None:
            raise InvalidArgumentError(
                f"unknown provider {name!r}; enabled: {', '.join(sorted(self.providers))}",
                field="provider",
            )
        return found

    async def catalog(
        self, query: OfferQuery, provider: str | None = None, sort: str = "price"
    ) -> Catalog:
        """Offers from every (or one) provider, concurrently; a failing provider is reported.

        ``sort``: ``price`` (default), ``-price``, ``vram`` (most first), ``reliability``
        (most first) or ``gpus`` (most first); ties go to the cheaper offer.
        """
        if sort not in SORTS:
            raise InvalidArgumentError(f"sort must be one of {', '.join(SORTS)}", field="sort")
        names = [self.provider(provider).name] if provider else sorted(self.providers)
        results = await asyncio.gather(
            *(self._search(n, query) for n in names), return_exceptions=True
        )
        offers: list[Offer] = []
        errors: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                errors[name] = _describe(result)
            else:
                offers.extend(
                    replace(o, price_per_hour=self.price(o.price_per_hour)) for o in result
                )
        offers.sort(key=SORTS[sort])
        return Catalog(offers[: query.limit], errors)

    async def _search(self, name: str, query: OfferQuery) -> list[Offer]:
        key = (name, query)
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        offers = await asyncio.wait_for(
            self.providers[name].search(query), self.config.search_timeout
        )
        offers = [o for o in offers if query.accepts(o)]
        self._cache[key] = (time.monotonic() + self.config.cache_ttl, offers)
        return offers

    async def _offer(self, provider: str, offer_id: str) -> Offer:
        for (name, _), (expires, offers) in list(self._cache.items()):
            if name == provider and expires > time.monotonic():
                for offer in offers:
                    if offer.offer_id == offer_id:
                        return offer
        for offer in await self._search(provider, OfferQuery(limit=1000)):
            if offer.offer_id == offer_id:
                return offer
        raise OfferNotFoundError("No such offer (it may have been taken)", offer_id=offer_id)

    # -------------------------------------------------------------- rent, etc.

    async def rent(
        self,
        owner: str,
        provider: str,
        offer_id: str,
        spec: RentSpec,
        idempotency_key: str | None = None,
        *,
        shared_hold: str | None = None,
        caller: Caller | None = None,
    ) -> GpuInstance:
        """Hold funds for ``hold_seconds`` of running, then rent; 402 if the hold is refused.

        ``shared_hold``: a reservation's hold that already covers this instance. ``caller``:
        the credential and address it is rented with (its GPU time counts in that usage session).
        """
        adapter = self.provider(provider)
        instance_id = (
            uuid.uuid5(INSTANCE_NAMESPACE, f"{owner}:{idempotency_key}")
            if idempotency_key
            else uuid.uuid4()
        )
        existing = await asyncio.to_thread(self._find, instance_id)
        if existing is not None:
            if existing.owner != owner:
                raise InvalidArgumentError("Idempotency-Key already used", field="Idempotency-Key")
            return existing
        offer = await self._offer(adapter.name, offer_id)
        price = self.price(offer.price_per_hour)
        hold_id = shared_hold or rental_hold_id(instance_id)

        def request(account: CreditAccount, now: datetime) -> GpuInstance:
            if shared_hold is None:
                self._place_own_hold(account, hold_id, price, instance_id, owner, now)
            return GpuInstance(
                instance_id=instance_id,
                owner=owner,
                provider=adapter.name,
                offer_id=offer_id,
                gpu_model=offer.gpu_model,
                num_gpus=offer.num_gpus,
                price_per_hour=price,
                provider_price_per_hour=offer.price_per_hour,
                hold_id=hold_id,
                image=spec.image,
                at=now,
                vram_gb=offer.vram_gb,
                credential=caller.credential if caller else "",
                address=caller.address if caller else "",
            )

        await asyncio.to_thread(self._create, owner, request)
        try:
            remote = await adapter.rent(
                offer_id,
                RentRequest(
                    label=str(instance_id),
                    image=spec.image,
                    env=spec.env,
                    ports=spec.ports,
                    disk_gb=spec.disk_gb,
                    onstart=spec.onstart,
                ),
            )
        except ProviderError as exc:
            await asyncio.to_thread(self._close_failed, instance_id, _describe(exc))
            self._cache.clear()
            status = 409 if isinstance(exc, OfferUnavailableError) else 502
            error = ProviderFailedError(f"Rent failed: {_describe(exc)}", provider=adapter.name)
            error.status = 503 if exc.retryable else status
            raise error from exc
        except Exception as exc:
            # Not an answer from the provider (a bug, a broken connection): the machine may
            # exist there. Close the rental (hold released); the reconciler destroys whatever
            # carries its label.
            await asyncio.to_thread(self._close_failed, instance_id, f"rent failed: {exc!r}")
            self._cache.clear()
            raise ProviderFailedError(
                f"Rent failed: {_describe(exc)}", provider=adapter.name
            ) from exc

        def provisioned(_: CreditAccount, gpu: GpuInstance, now: datetime) -> None:
            gpu.mark_provisioning(remote.instance_id, now=now)
            if remote.status == "running":
                gpu.mark_running(remote.host, remote.port, now=now)

        await asyncio.to_thread(self._transact, owner, instance_id, provisioned)
        return await asyncio.to_thread(self.get, instance_id)

    async def refresh(self, instance_id: UUID) -> GpuInstance:
        """Ask the provider how a requested/provisioning instance is doing and record it."""
        gpu = await asyncio.to_thread(self.get, instance_id)
        if gpu.state not in {"requested", "provisioning"} or not gpu.provider_instance_id:
            return gpu
        try:
            remote = await self.provider(gpu.provider).status(gpu.provider_instance_id)
        except ProviderError as exc:
            if exc.retryable or isinstance(exc, ProviderAuthError):
                return gpu
            await asyncio.to_thread(self._close_failed, instance_id, _describe(exc))
            return await asyncio.to_thread(self.get, instance_id)
        if remote.status == "running":

            def running(_: CreditAccount, g: GpuInstance, now: datetime) -> None:
                g.mark_running(remote.host, remote.port, now=now)

            await asyncio.to_thread(self._transact, gpu.owner, instance_id, running)
        elif remote.status in {"failed", "terminated"}:
            await asyncio.to_thread(
                self._close_failed,
                instance_id,
                f"provider reports {remote.raw_status or remote.status}",
            )
        return await asyncio.to_thread(self.get, instance_id)

    def meter(self, instance_id: UUID) -> bool:
        """Charge what is due from the hold; renew the hold; True if it must be stopped."""
        gpu = self.get(instance_id)

        def charge(account: CreditAccount, g: GpuInstance, now: datetime) -> bool:
            self._capture_due(account, g, now)
            if g.state != "running":
                return False
            hold = account.hold(g.hold_id)
            if not metering.renewal_due(hold, g.price_per_hour, self.config.renew_below_seconds):
                return False
            if self._renew_hold(account, g, now):
                return False
            if metering.blocks_spend(self.config.guardrails_action):
                g.block_spend("credits or spending limit exhausted", now=now)
            return True

        must_stop: bool = self._transact(gpu.owner, instance_id, charge)
        return must_stop and metering.stops_unfunded(self.config.guardrails_action)

    async def destroy(
        self, instance_id: UUID, *, actor: str, reason: str = "destroyed by the owner"
    ) -> GpuInstance:
        """Stop billing now, release the hold's rest, destroy at the provider, close it."""
        gpu = await asyncio.to_thread(self.get, instance_id)

        def stop(account: CreditAccount, g: GpuInstance, now: datetime) -> None:
            if g.request_stop(reason, actor, now=now):
                self._capture_due(account, g, now)
                self._release(account, g, now)

        await asyncio.to_thread(self._transact, gpu.owner, instance_id, stop)
        gpu = await asyncio.to_thread(self.get, instance_id)
        if gpu.provider_instance_id and gpu.state == "stopping":
            try:
                await self.provider(gpu.provider).destroy(gpu.provider_instance_id)
            except ProviderError as exc:
                if exc.retryable:
                    return gpu  # stays "stopping"; the background job retries
                raise ProviderFailedError(f"Destroy failed: {_describe(exc)}") from exc

        def terminated(_: CreditAccount, g: GpuInstance, now: datetime) -> None:
            if g.state == "stopping":
                g.mark_terminated(reason, now=now)

        await asyncio.to_thread(self._transact, gpu.owner, instance_id, terminated)
        return await asyncio.to_thread(self.get, instance_id)

    # ------------------------------------------------------------- reconciler

    async def reconcile(self, live: list[UUID], *, grace: float = 120.0) -> dict[str, int]:
        """Compare what providers run with the ledger.

        Orphans (a provider instance with no live rental of ours behind it, e.g. a rent whose
        answer was lost) are destroyed. Vanished rentals (live here, gone there for longer
        than ``grace`` seconds after they were requested) are closed and billed up to now.
        A rental still ``requested`` after ``grace`` (its rent died half-way) is closed, and
        the machine carrying its label, if the provider made one, is destroyed.
        ``live``: the ids of our live instances (from the read model).
        """
        counts = {"orphans": 0, "vanished": 0}
        for name, provider in self.providers.items():
            try:
                remote = await provider.list_instances()
            except ProviderError:
                continue  # a provider that is down is reconciled next time
            seen = {r.instance_id for r in remote}
            labels = {r.label for r in remote}
            for item in remote:
                if await asyncio.to_thread(self._is_orphan, item.label, item.instance_id, grace):
                    try:
                        await provider.destroy(item.instance_id)
                        counts["orphans"] += 1
                    except ProviderError:
                        continue
            for instance_id in live:
                gpu = await asyncio.to_thread(self._find, instance_id)
                if (
                    gpu is None
                    or gpu.provider != name
                    or not gpu.is_live
                    or gpu.provider_instance_id in seen
                    or (not gpu.provider_instance_id and str(gpu.id) in labels)
                    or self._age(gpu) < grace
                ):
                    continue
                reason = (
                    "vanished at the provider"
                    if gpu.provider_instance_id
                    else "rent did not complete; no machine at the provider"
                )
                await asyncio.to_thread(self._close_failed, instance_id, reason)
                counts["vanished"] += 1
        return counts

    def _age(self, gpu: GpuInstance) -> float:
        return (self.clock() - gpu.requested_at).total_seconds()

    def _is_orphan(self, label: str | None, remote_id: str, grace: float) -> bool:
        try:
            gpu = self._find(UUID(str(label)))
        except ValueError:
            gpu = None  # not ours at all
        if gpu is None:
            return True
        if gpu.state == "requested" and not gpu.provider_instance_id:
            if self._age(gpu) < grace:
                return False  # our rent is still in flight
            self._close_failed(gpu.id, "rent did not complete; its machine was destroyed")
            return True
        return not gpu.is_live or gpu.provider_instance_id != remote_id

    # ----------------------------------------------------------- reservations

    async def reserve(
        self,
        owner: str,
        count: int,
        query: OfferQuery,
        provider: str | None,
        spec: RentSpec,
        *,
        timeout: float = 300.0,
        poll: float = 0.5,
        caller: Caller | None = None,
    ) -> Reservation:
        """Rent ``count`` GPUs (the members' ``num_gpus`` add up to it) under one hold, all
        running within ``timeout`` or none."""
        if not 1 <= count <= MAX_GPUS:
            raise InvalidArgumentError(f"count must be 1 to {MAX_GPUS}", field="count")
        catalog = await self.catalog(replace(query, limit=max(64, 4 * count)), provider)
        offers = catalog.offers
        if not offers:
            detail = "; ".join(f"{k}: {v}" for k, v in catalog.errors.items())
            raise InvalidArgumentError(
                "No offer matches these filters" + (f" ({detail})" if detail else ""),
                field="filters",
            )
        # A short list is reused (an offer may be rented more than once).
        candidates = spread(offers, self.config.spread) * count
        planned = plan(candidates, count)
        if sum(o.num_gpus for o in planned) != count:
            raise InvalidArgumentError(
                f"the matching offers cannot make exactly {count} GPU(s) "
                f"(at most {sum(o.num_gpus for o in planned)} without overshooting); "
                "change count or the filters (e.g. num_gpus)",
                field="count",
            )
        amount = self._hold_amount(sum(o.price_per_hour for o in planned))
        reservation_id = uuid.uuid4()
        hold_id = f"res:{reservation_id}"

        def request(account: CreditAccount, now: datetime) -> Reservation:
            account.place_hold(
                hold_id,
                amount,
                key=f"hold:{hold_id}",
                now=now,
                expires_at=metering.hold_expiry(now, self.config.hold_seconds),
                policy=self.ledger.policy,
                reason="GPU reservation",
                reference=str(reservation_id),
                actor=owner,
            )
            return Reservation(
                reservation_id=reservation_id,
                owner=owner,
                count=count,
                provider=provider or "all",
                filters=_filters(query),
                image=spec.image,
                hold_id=hold_id,
                hold_amount=amount,
                deadline=now + timedelta(seconds=timeout),
                at=now,
            )

        await asyncio.to_thread(self._retrying, owner, lambda a, n: (request(a, n),) * 2)
        # Failover: each worker takes the next untried offer that fits the GPUs still free.
        # At most RESERVE_PARALLEL_RENTS at once: every rent writes the owner's account, and
        # more writers at a time only make them retry each other (a 503 under load).
        budget = GpuBudget(candidates, count)
        workers = min(len(planned), RESERVE_PARALLEL_RENTS)
        await asyncio.gather(
            *(self._fill(reservation_id, budget, spec, caller) for _ in range(workers))
        )
        return await self._settle(reservation_id, timeout=timeout, poll=poll)

    async def _fill(
        self,
        reservation_id: UUID,
        budget: GpuBudget[Offer],
        spec: RentSpec,
        caller: Caller | None = None,
    ) -> None:
        """Rent offers from ``budget`` until none fits the GPUs still free."""
        reservation = await asyncio.to_thread(self.get_reservation, reservation_id)
        while (offer := budget.take()) is not None:
            try:
                gpu = await self.rent(
                    reservation.owner,
                    offer.provider,
                    offer.offer_id,
                    spec,
                    shared_hold=reservation.hold_id,
                    caller=caller,
                )
            except DomainError as exc:
                budget.give_back(offer)
                await asyncio.to_thread(
                    self._update_reservation,
                    reservation_id,
                    _failed_rent(offer.provider, offer.offer_id, exc.message),
                )
                continue
            await asyncio.to_thread(self._update_reservation, reservation_id, _member(gpu))

    async def _settle(self, reservation_id: UUID, *, timeout: float, poll: float) -> Reservation:
        deadline = time.monotonic() + timeout
        while True:
            reservation = await asyncio.to_thread(self.get_reservation, reservation_id)
            if reservation.gpus < reservation.count:
                return await self._roll_back(reservation, "not enough offers could be rented")
            states = []
            for member in reservation.members:
                gpu = await self.refresh(UUID(member))
                states.append(gpu.state)
            if all(state == "running" for state in states):
                await asyncio.to_thread(
                    self._update_reservation, reservation_id, lambda r, now: r.confirm(now=now)
                )
                return await asyncio.to_thread(self.get_reservation, reservation_id)
            if any(state not in {"requested", "provisioning", "running"} for state in states):
                return await self._roll_back(reservation, "an instance failed to start")
            if time.monotonic() >= deadline:
                return await self._roll_back(reservation, "not all instances were running in time")
            await asyncio.sleep(poll)

    async def _roll_back(self, reservation: Reservation, reason: str) -> Reservation:
        for member in reservation.members:
            gpu = await asyncio.to_thread(self.get, UUID(member))
            if gpu.is_live:
                await self.destroy(gpu.id, actor="reservation", reason=f"reservation: {reason}")
        await asyncio.to_thread(
            self._close_reservation, reservation.id, lambda r, now: r.fail(reason, now=now)
        )
        return await asyncio.to_thread(self.get_reservation, reservation.id)

    async def release_reservation(self, reservation_id: UUID, *, actor: str) -> Reservation:
        """Destroy every member and free what is left of the hold."""
        reservation = await asyncio.to_thread(self.get_reservation, reservation_id)
        for member in reservation.members:
            gpu = await asyncio.to_thread(self.get, UUID(member))
            if gpu.is_live:
                await self.destroy(gpu.id, actor=actor, reason="reservation released")
        await asyncio.to_thread(
            self._close_reservation, reservation_id, lambda r, now: r.release(actor, now=now)
        )
        return await asyncio.to_thread(self.get_reservation, reservation_id)

    def get_reservation(self, reservation_id: UUID) -> Reservation:
        found: Any
        try:
            found = self.app.repository.get(reservation_id)
        except AggregateNotFoundError:
            found = None
        if not isinstance(found, Reservation):
            raise InstanceNotFoundError("No such reservation", reservation_id=str(reservation_id))
        return found

    def _update_reservation(
        self, reservation_id: UUID, change: Callable[[Reservation, datetime], None]
    ) -> None:
        reservation = self.get_reservation(reservation_id)

        def run(_: CreditAccount, now: datetime) -> tuple[None, Aggregate]:
            current = self.get_reservation(reservation_id)
            change(current, now)
            return None, current

        self._retrying(reservation.owner, run)

    def _close_reservation(
        self, reservation_id: UUID, change: Callable[[Reservation, datetime], None]
    ) -> None:
        """Change the reservation and release the rest of its hold, in one transaction."""
        reservation = self.get_reservation(reservation_id)

        def run(account: CreditAccount, now: datetime) -> tuple[None, Aggregate]:
            current = self.get_reservation(reservation_id)
            change(current, now)
            if account.hold(current.hold_id) is not None:
                account.release(
                    current.hold_id, key=f"release:{current.hold_id}", now=now, actor="reservation"
                )
            return None, current

        self._retrying(reservation.owner, run)

    # ------------------------------------------------------------------ reads

    def get(self, instance_id: UUID) -> GpuInstance:
        found = self._find(instance_id)
        if found is None:
            raise InstanceNotFoundError("No such instance", instance_id=str(instance_id))
        return found

    def _find(self, instance_id: UUID) -> GpuInstance | None:
        try:
            gpu: GpuInstance = self.app.repository.get(instance_id)
        except AggregateNotFoundError:
            return None
        return gpu if isinstance(gpu, GpuInstance) else None

    # ---------------------------------------------------------------- helpers

    def _place_own_hold(
        self,
        account: CreditAccount,
        hold_id: str,
        price: int,
        instance_id: UUID,
        actor: str,
        now: datetime,
    ) -> None:
        account.place_hold(
            hold_id,
            self._hold_amount(price),
            key=f"hold:{hold_id}",
            now=now,
            expires_at=metering.hold_expiry(now, self.config.hold_seconds),
            policy=self.ledger.policy,
            reason="GPU rental",
            reference=str(instance_id),
            actor=actor,
        )

    def _hold_amount(self, price_per_hour: int) -> int:
        return metering.hold_amount(price_per_hour, self.config.hold_seconds)

    def _capture_due(self, account: CreditAccount, gpu: GpuInstance, now: datetime) -> None:
        due = gpu.due(now)
        step = metering.split_due(due, gpu.billed, account.hold(gpu.hold_id), now)
        if step is None:
            return
        taken = step.from_hold
        if taken:
            account.capture(
                gpu.hold_id,
                taken,
                key=f"meter:{gpu.id}:{due}",
                now=now,
                reason="GPU time",
                actor="metering",
            )
        if step.extra:
            try:
                account.charge(
                    step.extra,
                    key=f"meter-extra:{gpu.id}:{due}",
                    now=now,
                    policy=self.ledger.policy,
                    reason="GPU time",
                    actor="metering",
                    reference=str(gpu.id),
                )
                taken = step.total
            except DomainError:
                pass  # cannot be paid: billed stays behind; the instance is being stopped
        gpu.record_metering(gpu.billed + taken, now, gpu.hold_id)

    def _renew_hold(self, account: CreditAccount, gpu: GpuInstance, now: datetime) -> bool:
        new_id = gpu.next_hold_id()
        try:
            self._place_own_hold(account, new_id, gpu.price_per_hour, gpu.id, "metering", now)
        except DomainError:
            return False
        self._release(account, gpu, now)
        gpu.record_metering(gpu.billed, now, new_id)
        return True

    @staticmethod
    def _release(account: CreditAccount, gpu: GpuInstance, now: datetime) -> None:
        """Free the rest of the instance's own hold (a reservation's shared hold stays)."""
        if gpu.owns_hold and account.hold(gpu.hold_id) is not None:
            account.release(gpu.hold_id, key=f"release:{gpu.hold_id}", now=now, actor="metering")

    def _close_failed(self, instance_id: UUID, reason: str) -> None:
        gpu = self.get(instance_id)

        def fail(account: CreditAccount, g: GpuInstance, now: datetime) -> None:
            if g.is_live:
                self._capture_due(account, g, now)
                g.mark_failed(reason, now=now)
                self._release(account, g, now)

        self._transact(gpu.owner, instance_id, fail)

    def _create(
        self, owner: str, command: Callable[[CreditAccount, datetime], GpuInstance]
    ) -> GpuInstance:
        """Run ``command`` on the owner's account; save it with the instance it creates."""
        return self._retrying(owner, lambda account, now: (command(account, now),) * 2)

    def _transact(
        self,
        owner: str,
        instance_id: UUID,
        command: Callable[[CreditAccount, GpuInstance, datetime], T],
    ) -> T:
        """Run ``command`` on the owner's account and the instance; save both at once.

        A saved change into or out of ``running`` is announced (``on_instances_changed``).
        """
        states: list[str] = []

        def run(account: CreditAccount, now: datetime) -> tuple[T, GpuInstance]:
            gpu = self.get(instance_id)
            before = gpu.state
            result = command(account, gpu, now)
            states[:] = [before, gpu.state]
            return result, gpu

        result = self._retrying(owner, run)
        if self.on_instances_changed is not None and "running" in states and len(set(states)) > 1:
            self.on_instances_changed(owner)
        return result

    def _retrying(
        self,
        owner: str,
        run: Callable[[CreditAccount, datetime], tuple[T, Aggregate]],
    ) -> T:
        return self.ledger.transact(owner, run, clock=self.clock)


def spread(offers: list[Offer], strategy: str) -> list[Offer]:
    """Order a reservation's candidate offers (each list already cheapest first).

    ``round_robin`` (and ``equal_weighted``) interleave providers and then locations, so the
    set does not sit on one marketplace or site when others match; any other strategy keeps
    plain cheapest-first order.
    """
    if strategy not in {"round_robin", "equal_weighted"}:
        return list(offers)
    groups: dict[tuple[str, str], list[Offer]] = {}
    for offer in offers:
        groups.setdefault((offer.provider, offer.location), []).append(offer)
    queues = sorted(groups.values(), key=lambda g: (g[0].price_per_hour, g[0].provider))
    ordered: list[Offer] = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def _failed_rent(
    provider: str, offer_id: str, reason: str
) -> Callable[[Reservation, datetime], None]:
    def change(reservation: Reservation, now: datetime) -> None:
        reservation.record_failed_rent(provider, offer_id, reason, now=now)

    return change


def _member(gpu: GpuInstance) -> Callable[[Reservation, datetime], None]:
    def change(reservation: Reservation, now: datetime) -> None:
        reservation.add_member(gpu.id, gpu.provider, gpu.offer_id, gpu.num_gpus, now=now)

    return change


def _filters(query: OfferQuery) -> dict[str, Any]:
    return {k: v for k, v in vars(query).items() if v is not None and k != "limit"}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
