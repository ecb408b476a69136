"""One rule for bad input on every door: 400 with a problem body naming the field, never 422.

Domain validation (``InvalidArgumentError``, ``InvalidAmountError``) and request parsing
answer alike; gRPC maps both to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from domain.errors import InvalidAmountError, InvalidArgumentError
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.grpc.errors import status_of
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.support.http import JWT_SECRET

USD = 1_000_000

PAY = {"X-Billing": "Stripe", "X-Preferred-Payment": "card:pm_card_visa"}
# (method, path, request kwargs, the field the problem must name)
BAD_INPUTS: list[tuple[str, str, dict[str, Any], str]] = [
    # payments
    ("POST", "/api/v1/billing/payment", {"json": {"amount": "0.50"}, "headers": PAY}, "amount"),
    ("POST", "/api/v1/billing/payment", {"json": {"amount": "10.001"}, "headers": PAY}, "amount"),
    ("POST", "/api/v1/billing/payment", {"json": {"amount": "x"}, "headers": PAY}, "amount"),
    (
        "POST",
        "/api/v1/billing/payment",
        {"json": {"amount": "10", "currency": "EUR"}, "headers": PAY},
        "currency",
    ),
    ("GET", "/api/v1/billing/statements/2026-13", {}, "month"),
    # reservations and the catalog
    ("POST", "/api/v1/gpu/instances/reserve", {"json": {"count": 17}}, "count"),
    ("POST", "/api/v1/gpu/instances/reserve", {"json": {"count": 2, "gpu_model": "nope"}}, ""),
    ("POST", "/api/v1/gpu/instances/reserve", {"json": {"count": 2, "max_price": "x"}}, ""),
    ("GET", "/api/v1/gpu/instances?provider=nope", {}, "provider"),
    ("GET", "/api/v1/gpu/instances?max_price=abc", {}, "max_price"),
    # strategy
    ("PUT", "/api/v1/loadbalancer/strategy", {"json": {"strategy": "nope"}}, "strategy"),
    # guard rails
    ("POST", "/api/v1/guardrails/spending/check", {"json": {"estimated_cost": "-1"}}, ""),
    ("POST", "/api/v1/guardrails/spending/check", {"json": {"estimated_cost": "x"}}, ""),
    # an agent door: the action's argument is named
    (
        "POST",
        "/api/v1/a2a",
        {"json": {"action": "reserve_gpus", "from_agent": "me", "parameters": {"count": 99}}},
        "count",
    ),
]


@pytest.fixture
def client(settings: Settings, clock: FixedClock) -> Iterator[tuple[TestClient[Any], Container]]:
    stripe = dataclasses.replace(  # configured, so the payment checks reach the amount
        settings.payments,  # (never called here)
        stripe_secret_key="sk_test_unused",
        stripe_webhook_secret="whsec_unused",
        stripe_api_base="http://127.0.0.1:9",
    )
    auth = dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET)
    c = bootstrap(dataclasses.replace(settings, auth=auth, payments=stripe), clock=clock)
    try:
        with TestClient(create_app(c)) as test_client:
            yield test_client, c
    finally:
        c.close()


def _login(client: TestClient[Any], c: Container) -> dict[str, str]:
    body = {"email": "bad@example.com", "password": "password-1", "name": "Bad"}
    client.post("/api/v1/auth/register", json=body)
    token = client.post("/api/v1/auth/login", json={k: body[k] for k in ("email", "password")})
    c.ledger.grant(c.users.by_email("bad@example.com").id, 50 * USD, key="g")
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


def test_bad_input_is_400_naming_the_field_never_422(
    client: tuple[TestClient[Any], Container],
) -> None:
    test_client, c = client
    auth = _login(test_client, c)
    seen = []
    for method, path, kwargs, field in BAD_INPUTS:
        headers = {**auth, **kwargs.get("headers", {})}
        extra = {k: v for k, v in kwargs.items() if k != "headers"}
        response = test_client.request(method, path, headers=headers, **extra)
        seen.append(response.status_code)
        assert response.status_code == 400, (method, path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        if field:
            body = response.json()
            named = {body.get("field"), *(e.get("field") for e in body.get("errors", []))}
            assert field in named or field in body["detail"], (path, body)
    # a webhook whose signature fails is a 400 too (Stripe expects it)
    hook = test_client.post(
        "/api/v1/billing/webhooks/stripe",
        content=b'{"id": "evt_1"}',
        headers={"Stripe-Signature": "t=1,v1=00"},
    )
    assert hook.status_code == 400, hook.text
    assert 422 not in seen


def test_domain_validation_errors_are_400_and_invalid_argument_over_grpc() -> None:
    for error in (InvalidArgumentError("bad", field="x"), InvalidAmountError("amount", "bad")):
        assert error.status == 400
        assert status_of(error).name == "INVALID_ARGUMENT"
