"""Reservations of several sandbox GPUs: one hold, failover, all-or-nothing, release."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from domain.errors import InsufficientCreditsError
from domain.marketplace import OfferQuery
from domain.money import usd_to_micros
from domain.services.marketplace import RentSpec
from infrastructure.providers.sandbox import SandboxProvider
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.support.http import JWT_SECRET

USD = 1_000_000


@pytest.fixture
def container(settings: Settings, clock: FixedClock) -> Iterator[Container]:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(settings.providers, sandbox_provisioning_delay=0.0),
    )
    c = bootstrap(tuned, clock=clock)
    try:
        yield c
    finally:
        c.close()


def _use(c: Container, provider: SandboxProvider) -> None:
    asyncio.run(c.aclose_providers())
    c.marketplace.providers = {"sandbox": provider}


def _reserve(c: Container, owner: str, count: int, **kwargs: Any) -> Any:
    return asyncio.run(
        c.marketplace.reserve(
            owner,
            count,
            OfferQuery(gpu_model=kwargs.pop("gpu_model", "4090")),
            "sandbox",
            RentSpec(),
            timeout=kwargs.pop("timeout", 5.0),
            poll=0.05,
        )
    )


def test_reservation_fails_over_and_confirms(container: Container) -> None:
    _use(container, SandboxProvider(provisioning_delay=0.0, fail_on={3}))
    container.ledger.grant("u1", 500 * USD, key="g")
    reservation = _reserve(container, "u1", 4)
    assert reservation.state == "confirmed", reservation.reason
    assert reservation.gpus == 4  # 4 GPUs (1x, 1x, 2x 4090 planned), whichever rent failed
    assert sum(container.marketplace.get(uuid.UUID(m)).num_gpus for m in reservation.members) == 4
    assert len(reservation.attempts) == 1  # the third rent failed and the next offer took over
    view = container.ledger.account("u1")
    assert view.held == reservation.hold_amount  # one hold for the whole set
    for member in reservation.members:
        gpu = container.marketplace.get(uuid.UUID(member))
        assert gpu.state == "running"
        assert gpu.hold_id == reservation.hold_id
    released = asyncio.run(container.marketplace.release_reservation(reservation.id, actor="u1"))
    assert released.state == "released"
    assert container.ledger.account("u1").held == 0
    for member in reservation.members:
        assert container.marketplace.get(uuid.UUID(member)).state == "terminated"


def test_failover_gives_the_freed_gpus_to_offers_that_fit(container: Container) -> None:
    """The 2x 4090 always fails: its 2 GPUs go to 1x offers, not to the 4x/8x next in line."""
    _use(container, SandboxProvider(provisioning_delay=0.0, fail_on={"sbx-4090-2x-us"}))
    container.ledger.grant("u1", 500 * USD, key="g")
    reservation = _reserve(container, "u1", 4)
    assert reservation.state == "confirmed", reservation.reason
    assert [a["offer_id"] for a in reservation.attempts] == ["sbx-4090-2x-us"]
    members = [container.marketplace.get(uuid.UUID(m)) for m in reservation.members]
    assert [g.num_gpus for g in members] == [1, 1, 1, 1]
    assert reservation.gpus == 4


def test_reservation_rolls_back_when_one_never_runs(container: Container) -> None:
    _use(container, SandboxProvider(provisioning_delay=0.0, fail_on={2: "stuck"}))
    container.ledger.grant("u1", 500 * USD, key="g")
    reservation = _reserve(container, "u1", 3, timeout=0.5)
    assert reservation.state == "failed"
    assert "in time" in reservation.reason
    assert container.ledger.account("u1").held == 0
    for member in reservation.members:
        assert container.marketplace.get(uuid.UUID(member)).state == "terminated"
    provider = container.marketplace.providers["sandbox"]
    assert asyncio.run(provider.list_instances()) == []


def test_reservation_without_funds_is_402_and_rents_nothing(container: Container) -> None:
    _use(container, SandboxProvider(provisioning_delay=0.0))
    container.ledger.grant("u1", USD // 10, key="g")
    with pytest.raises(InsufficientCreditsError):
        _reserve(container, "u1", 16)
    provider = container.marketplace.providers["sandbox"]
    assert asyncio.run(provider.list_instances()) == []


def test_reservation_over_rest(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        client.post(
            "/api/v1/auth/register",
            json={"email": "r@example.com", "password": "password-1", "name": "R"},
        )
        token = client.post(
            "/api/v1/auth/login", json={"email": "r@example.com", "password": "password-1"}
        )
        auth = {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}
        user = container.users.by_email("r@example.com")
        container.ledger.grant(user.id, 200 * USD, key="g")
        assert (
            client.post(
                "/api/v1/gpu/instances/reserve", json={"count": 17}, headers=auth
            ).status_code
            == 400
        )
        assert (
            client.post(
                "/api/v1/gpu/instances/reserve",
                json={"count": 2, "gpu_model": "no-such-gpu"},
                headers=auth,
            ).status_code
            == 400
        )
        made = client.post(
            "/api/v1/gpu/instances/reserve",
            json={"count": 2, "gpu_model": "4090", "provider": "sandbox"},
            headers=auth,
        )
        assert made.status_code == 201, made.text
        body = made.json()["reservation"]
        assert body["state"] == "confirmed"
        path = f"/api/v1/gpu/reservations/{body['id']}"
        assert client.get(path, headers=auth).json()["reservation"]["count"] == 2
        released = client.delete(path, headers=auth)
        assert released.json()["reservation"]["state"] == "released"


def _instances(client: TestClient[Any], auth: dict[str, str], ids: list[str]) -> list[Any]:
    return [
        client.get(f"/api/v1/gpu/instances/sandbox/{i}", headers=auth).json()["instance"]
        for i in ids
    ]


def test_reserve_16_means_16_gpus_not_16_instances(container: Container) -> None:
    """count is GPUs: an offer with more GPUs than remain is skipped, never overshot."""
    with TestClient(create_app(container)) as client:
        client.post(
            "/api/v1/auth/register",
            json={"email": "g@example.com", "password": "password-1", "name": "G"},
        )
        token = client.post(
            "/api/v1/auth/login", json={"email": "g@example.com", "password": "password-1"}
        )
        auth = {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}
        user = container.users.by_email("g@example.com")
        container.ledger.grant(user.id, 500 * USD, key="g")
        # A100 SXM4 offers: 1x 1.29, 2x 2.58, 8x 10.32 (the 8x fits once, then is skipped)
        made = client.post(
            "/api/v1/gpu/instances/reserve",
            json={"count": 16, "gpu_model": "A100 SXM4", "provider": "sandbox"},
            headers=auth,
        )
        assert made.status_code == 201, made.text
        body = made.json()["reservation"]
        assert body["state"] == "confirmed", body["reason"]
        assert body["count"] == 16
        assert body["gpus"] == 16
        instances = _instances(client, auth, body["instances"])
        gpus = [i["num_gpus"] for i in instances]
        assert sum(gpus) == 16
        assert gpus.count(8) == 1  # the 8x fitted once; later it would have overshot
        assert [m["num_gpus"] for m in body["members"]] == gpus
        assert [m["id"] for m in body["members"]] == body["instances"]
        assert len(body["instances"]) < 16
        # the hold covers those 16 GPUs for an hour, not 16 instances' worth
        held = sum(usd_to_micros(i["price_per_hour"], field="p") for i in instances)
        assert usd_to_micros(body["held"], field="held") == held
        client.delete(f"/api/v1/gpu/reservations/{body['id']}", headers=auth)

        # 4 GPUs of 8x-only offers cannot be made without overshooting: refused, nothing held
        refused = client.post(
            "/api/v1/gpu/instances/reserve",
            json={"count": 4, "gpu_model": "H100 SXM", "num_gpus": 8, "provider": "sandbox"},
            headers=auth,
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["field"] == "count"
        assert container.ledger.account(user.id).held == 0


def test_reconciler_destroys_orphans_and_closes_vanished(
    container: Container, clock: FixedClock
) -> None:
    from domain.marketplace import RentRequest

    provider = SandboxProvider(provisioning_delay=0.0)
    _use(container, provider)
    container.ledger.grant("u1", 50 * USD, key="g")
    offer = asyncio.run(container.marketplace.catalog(OfferQuery(gpu_model="4090"))).offers[0]
    ours = asyncio.run(container.marketplace.rent("u1", "sandbox", offer.offer_id, RentSpec()))
    orphan = asyncio.run(provider.rent(offer.offer_id, RentRequest(label=str(uuid.uuid4()))))
    stranger = asyncio.run(provider.rent(offer.offer_id, RentRequest(label="not-ours")))
    counts = asyncio.run(container.marketplace.reconcile([ours.id]))
    assert counts == {"orphans": 2, "vanished": 0}
    remaining = {i.instance_id for i in asyncio.run(provider.list_instances())}
    assert remaining == {ours.provider_instance_id}
    assert orphan.instance_id not in remaining
    assert stranger.instance_id not in remaining

    assert ours.provider_instance_id is not None
    asyncio.run(provider.destroy(ours.provider_instance_id))  # gone behind our back
    clock.advance(seconds=30)
    assert asyncio.run(container.marketplace.reconcile([ours.id])) == {
        "orphans": 0,
        "vanished": 0,
    }  # within the grace period: not yet
    clock.advance(seconds=200)
    assert asyncio.run(container.marketplace.reconcile([ours.id]))["vanished"] == 1
    gpu = container.marketplace.get(ours.id)
    assert gpu.state == "failed"
    assert gpu.billed == gpu.price_per_hour * 230 // 3600
    assert container.ledger.account("u1").held == 0
