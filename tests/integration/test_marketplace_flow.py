"""The sandbox marketplace end to end through the REST API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from domain.guardrails import GuardrailPolicy
from domain.marketplace import OfferQuery
from domain.money import usd_to_micros
from domain.services.marketplace import RentSpec
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.support.http import JWT_SECRET

USD = 1_000_000
PASSWORD = "correct-horse-battery"


@pytest.fixture
def market(settings: Settings, clock: FixedClock) -> Iterator[tuple[TestClient[Any], Container]]:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(
            settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        ledger=dataclasses.replace(
            settings.ledger, guardrails=GuardrailPolicy(enabled=True, limits={"72H": 40 * USD})
        ),
    )
    container = bootstrap(tuned, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            yield client, container
    finally:
        container.close()


def _user(client: TestClient[Any], c: Container, email: str, credits: int) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "U"})
    token = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    user = c.users.by_email(email)
    if credits:
        c.ledger.grant(user.id, credits, key=f"seed-{email}")
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


def _run(c: Container, job: str) -> None:
    """One background-job step, after the read model it picks work from is caught up."""
    c.runner.catch_up()
    jobs = c.jobs()
    asyncio.run(jobs.run_once() if job == "poll" else jobs.meter_all())


def test_rent_meter_destroy_bills_exactly(
    market: tuple[TestClient[Any], Container], clock: FixedClock
) -> None:
    client, c = market
    auth = _user(client, c, "renter@example.com", 30 * USD)
    offers = client.get("/api/v1/gpu/instances", params={"gpu_model": "4090"}, headers=auth)
    assert offers.status_code == 200, offers.text
    body = offers.json()
    assert body["errors"] == {}
    offer = body["offers"][0]
    assert "4090" in offer["gpu_model"]
    price = usd_to_micros(offer["price_per_hour"])

    rented = client.post(
        f"/api/v1/gpu/instances/sandbox/{offer['id']}",
        json={},
        headers={**auth, "Idempotency-Key": "first"},
    )
    assert rented.status_code == 201, rented.text
    instance = rented.json()["instance"]
    again = client.post(
        f"/api/v1/gpu/instances/sandbox/{offer['id']}",
        json={},
        headers={**auth, "Idempotency-Key": "first"},
    )
    assert again.json()["instance"]["id"] == instance["id"]  # one rental, not two

    user = c.users.by_email("renter@example.com")
    view = c.ledger.account(user.id)
    assert view.held == price  # one hour of running is held
    _run(c, "poll")  # provisioning -> running (sandbox has no delay here)
    gpu = c.marketplace.get(uuid.UUID(instance["id"]))
    assert gpu.state == "running"
    endpoint = f"http://{gpu.host}:{gpu.port}"
    infer = httpx.post(
        f"{endpoint}/v2/models/demo/infer",
        json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]},
    )
    assert infer.status_code == 200
    assert infer.json()["outputs"][0]["data"] == [3.0, 5.0]

    clock.advance(seconds=90)
    _run(c, "meter")
    gpu = c.marketplace.get(gpu.id)
    assert gpu.billed == gpu.price_per_hour * 90 // 3600
    clock.advance(seconds=30)
    done = client.delete(f"/api/v1/gpu/instances/sandbox/{gpu.id}", headers=auth)
    assert done.status_code == 200, done.text
    assert done.json()["instance"]["state"] == "terminated"
    gpu = c.marketplace.get(gpu.id)
    total = gpu.price_per_hour * 120 // 3600
    assert gpu.billed == total
    view = c.ledger.account(user.id)
    assert view.held == 0
    assert view.balance == 30 * USD - total
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{endpoint}/health", timeout=2)
    c.runner.catch_up()
    rentals = client.get("/api/v1/gpu/rentals", headers=auth).json()["rentals"]
    assert [r["state"] for r in rentals] == ["terminated"]


def test_no_funds_means_402_and_nothing_rented(market: tuple[TestClient[Any], Container]) -> None:
    client, c = market
    auth = _user(client, c, "poor@example.com", 0)
    offer = client.get("/api/v1/gpu/instances", headers=auth).json()["offers"][0]
    response = client.post(f"/api/v1/gpu/instances/sandbox/{offer['id']}", json={}, headers=auth)
    assert response.status_code == 402
    c.runner.catch_up()
    assert client.get("/api/v1/gpu/rentals", headers=auth).json()["rentals"] == []


def test_guard_rail_stops_a_running_instance(
    market: tuple[TestClient[Any], Container], clock: FixedClock
) -> None:
    client, c = market
    auth = _user(client, c, "spender@example.com", 1000 * USD)
    offers = client.get("/api/v1/gpu/instances", params={"max_price": "20"}, headers=auth).json()
    expensive = max(offers["offers"], key=lambda o: float(o["price_per_hour"]))
    rented = client.post(f"/api/v1/gpu/instances/sandbox/{expensive['id']}", json={}, headers=auth)
    assert rented.status_code == 201, rented.text
    instance_id = uuid.UUID(rented.json()["instance"]["id"])
    _run(c, "poll")
    stopped = False
    for _ in range(40):  # the 72h window (40 USD) runs out after a few renewals
        clock.advance(minutes=55)
        _run(c, "meter")
        if c.marketplace.get(instance_id).state in {"terminated", "stopping"}:
            stopped = True
            break
    assert stopped
    user = c.users.by_email("spender@example.com")
    view = c.ledger.account(user.id)
    assert view.held == 0
    assert view.window_spend["72H"] <= 40 * USD
    gpu = c.marketplace.get(instance_id)
    assert gpu.reason == "credits or spending limit exhausted"


def test_other_users_cannot_see_or_destroy(market: tuple[TestClient[Any], Container]) -> None:
    client, c = market
    owner = _user(client, c, "owner@example.com", 20 * USD)
    other = _user(client, c, "other@example.com", 20 * USD)
    offer = client.get("/api/v1/gpu/instances", headers=owner).json()["offers"][0]
    instance = client.post(
        f"/api/v1/gpu/instances/sandbox/{offer['id']}", json={}, headers=owner
    ).json()["instance"]
    path = f"/api/v1/gpu/instances/sandbox/{instance['id']}"
    assert client.get(path, headers=other).status_code == 404
    assert client.delete(path, headers=other).status_code == 404
    assert client.get(path, headers=owner).status_code == 200
    assert client.delete(path, headers=owner).status_code == 200


def test_bad_input_is_4xx(market: tuple[TestClient[Any], Container]) -> None:
    client, c = market
    auth = _user(client, c, "bad@example.com", 5 * USD)
    assert (
        client.get("/api/v1/gpu/instances", params={"provider": "nope"}, headers=auth).status_code
        == 400
    )
    assert (
        client.get("/api/v1/gpu/instances", params={"max_price": "abc"}, headers=auth).status_code
        == 400
    )
    assert (
        client.post(
            "/api/v1/gpu/instances/sandbox/no-such-offer", json={}, headers=auth
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/v1/gpu/instances/sandbox/x", json={"ports": [0]}, headers=auth
        ).status_code
        == 400
    )
    assert client.get("/api/v1/gpu/instances/sandbox/not-a-uuid", headers=auth).status_code in {
        400,
        404,
    }


def test_block_action_records_and_keeps_running(settings: Settings, clock: FixedClock) -> None:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(settings.providers, sandbox_provisioning_delay=0.0),
        ledger=dataclasses.replace(
            settings.ledger, guardrails=GuardrailPolicy(enabled=True, limits={"72H": 3 * USD})
        ),
    )
    c = bootstrap(tuned, clock=clock)
    c.marketplace.config = dataclasses.replace(c.marketplace.config, guardrails_action="block")
    try:
        c.ledger.grant("u1", 100 * USD, key="g")
        offer = asyncio.run(c.marketplace.catalog(OfferQuery(gpu_model="4090"))).offers[0]
        gpu = asyncio.run(c.marketplace.rent("u1", "sandbox", offer.offer_id, RentSpec()))
        for _ in range(12):
            clock.advance(minutes=55)
            c.marketplace.meter(gpu.id)
        gpu = c.marketplace.get(gpu.id)
        assert gpu.state == "running"  # blocked, not stopped
        assert gpu.spend_blocked
        names = [type(e).__name__ for e in c.app.events.get(gpu.id)]
        assert names.count("SpendBlocked") == 1
    finally:
        c.close()
