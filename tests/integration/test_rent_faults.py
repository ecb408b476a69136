"""A rent that fails with something other than ``ProviderError`` after the provider made the
machine (a bug, a broken connection), or that dies half-way, leaves nothing running unbilled:
the rental is closed (hold released) and the reconciler destroys the machine by its label.
SQLite and PostgreSQL, with the sandbox marketplace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from domain.marketplace import OfferQuery, ProviderInstance, RentRequest
from domain.services.marketplace import ProviderFailedError, RentSpec
from infrastructure.providers.sandbox import SandboxProvider
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

USD = 1_000_000


class MadeThenBroke(SandboxProvider):
    """Makes the machine, then fails as no provider error would (after the request was sent)."""

    async def rent(self, offer_id: str, request: RentRequest) -> ProviderInstance:
        await super().rent(offer_id, request)
        raise ConnectionResetError("connection reset by peer")


class MadeThenHung(SandboxProvider):
    """Makes the machine, then never answers (the rent is cancelled: a shutdown, a kill)."""

    async def rent(self, offer_id: str, request: RentRequest) -> ProviderInstance:
        await super().rent(offer_id, request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
def container(settings: Settings, clock: FixedClock) -> Iterator[Container]:
    c = bootstrap(
        dataclasses.replace(
            settings,
            providers=dataclasses.replace(settings.providers, sandbox_provisioning_delay=0.0),
        ),
        clock=clock,
    )
    try:
        yield c
    finally:
        c.close()


def _use(c: Container, provider: SandboxProvider) -> str:
    asyncio.run(c.aclose_providers())
    c.marketplace.providers = {"sandbox": provider}
    c.ledger.grant("u1", 50 * USD, key="g")
    return asyncio.run(c.marketplace.catalog(OfferQuery(gpu_model="4090"))).offers[0].offer_id


def _only_rental(c: Container) -> str:
    c.runner.catch_up()
    with c.db.read() as tx:
        rows = tx.fetchall("SELECT instance_id FROM instances")
    assert len(rows) == 1
    return str(rows[0][0])


async def _rent_then_die(c: Container, provider: SandboxProvider, offer_id: str) -> None:
    """Start a rent, and cancel it once the provider has made the machine."""
    task = asyncio.create_task(c.marketplace.rent("u1", "sandbox", offer_id, RentSpec()))
    for _ in range(500):
        if await provider.list_instances():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_rent_that_breaks_after_the_machine_was_made_is_closed_and_destroyed(
    container: Container,
) -> None:
    provider = MadeThenBroke(provisioning_delay=0.0)
    offer_id = _use(container, provider)
    with pytest.raises(ProviderFailedError):
        asyncio.run(container.marketplace.rent("u1", "sandbox", offer_id, RentSpec()))
    gpu = container.marketplace.get(uuid.UUID(_only_rental(container)))
    assert gpu.state == "failed"
    assert container.ledger.account("u1").held == 0  # the hold is released at once
    made = asyncio.run(provider.list_instances())
    assert [m.label for m in made] == [str(gpu.id)]  # the machine carries our id
    counts = asyncio.run(container.marketplace.reconcile([]))
    assert counts["orphans"] == 1
    assert asyncio.run(provider.list_instances()) == []


def test_a_rent_that_died_half_way_is_found_after_the_grace_and_destroyed(
    container: Container, clock: FixedClock
) -> None:
    provider = MadeThenHung(provisioning_delay=0.0)
    offer_id = _use(container, provider)
    asyncio.run(_rent_then_die(container, provider, offer_id))
    instance_id = uuid.UUID(_only_rental(container))
    assert container.marketplace.get(instance_id).state == "requested"
    assert container.ledger.account("u1").held > 0
    live = [instance_id]
    assert asyncio.run(container.marketplace.reconcile(live)) == {"orphans": 0, "vanished": 0}
    clock.advance(seconds=200)  # past the grace: no rent is in flight that long
    assert asyncio.run(container.marketplace.reconcile(live))["orphans"] == 1
    assert asyncio.run(provider.list_instances()) == []
    assert container.marketplace.get(instance_id).state == "failed"
    assert container.ledger.account("u1").held == 0


def test_a_rent_that_died_before_the_provider_made_anything_is_closed(
    container: Container, clock: FixedClock
) -> None:
    provider = MadeThenHung(provisioning_delay=0.0)
    offer_id = _use(container, provider)
    asyncio.run(_rent_then_die(container, provider, offer_id))
    for made in asyncio.run(provider.list_instances()):  # as if the provider never made it
        asyncio.run(provider.destroy(made.instance_id))
    instance_id = uuid.UUID(_only_rental(container))
    clock.advance(seconds=200)
    assert asyncio.run(container.marketplace.reconcile([instance_id])) == {
        "orphans": 0,
        "vanished": 1,
    }
    assert container.marketplace.get(instance_id).state == "failed"
    assert container.ledger.account("u1").held == 0
