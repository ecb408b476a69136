"""A server with no payment provider configured (the default): every "not configured" answer
is a 400 naming the field and the variables the operator sets, and auto-renew refuses a
provider this server could never charge."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from domain.services.payments import PaymentRequest, ProcessorNotConfiguredError
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.support.http import JWT_SECRET

PASSWORD = "correct-horse-battery"
WALLET = "0x" + "33" * 20
VARIABLES = {
    "Stripe": ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"),
    "Crypto": ("CRYPTO_RPC_URL", "CRYPTO_RECEIVING_ADDRESS", "CRYPTO_NETWORK"),
    "AfterDark": ("AFTERDARK_API_KEY", "AFTERDARK_API_URL"),
}
METHODS = {
    "Stripe": "card:pm_card_visa",
    "Crypto": f"crypto:ethereum:{WALLET}",
    "AfterDark": "card:tok_visa",
}


@dataclasses.dataclass
class Bare:
    client: TestClient[Any]
    c: Container
    auth: dict[str, str]


@pytest.fixture
def bare(sqlite_settings: Settings) -> Iterator[Bare]:
    c = bootstrap(
        dataclasses.replace(
            sqlite_settings, auth=dataclasses.replace(sqlite_settings.auth, jwt_secret=JWT_SECRET)
        )
    )
    try:
        with TestClient(create_app(c)) as client:
            client.post(
                "/api/v1/auth/register",
                json={"email": "new@example.com", "password": PASSWORD, "name": "New"},
            )
            login = client.post(
                "/api/v1/auth/login", json={"email": "new@example.com", "password": PASSWORD}
            )
            token = login.json()["tokens"]["access_token"]
            yield Bare(client, c, {"Authorization": f"Bearer {token}"})
    finally:
        c.close()


def _names_the_variables(body: dict[str, Any], provider: str) -> None:
    detail = body["detail"]
    for variable in VARIABLES[provider]:
        assert variable in detail, body
    assert "supported: none" not in detail, body


@pytest.mark.parametrize("provider", sorted(VARIABLES))
def test_paying_with_an_unconfigured_provider_names_its_variables(
    bare: Bare, provider: str
) -> None:
    refused = bare.client.post(
        "/api/v1/billing/payment",
        json={"amount": "10.00", "currency": "USD"},
        headers={**bare.auth, "X-Billing": provider, "X-Preferred-Payment": METHODS[provider]},
    )
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["field"] == "provider", body
    assert "not configured" in body["detail"], body
    _names_the_variables(body, provider)


@pytest.mark.parametrize("provider", ["Stripe", "AfterDark"])
def test_auto_renew_refuses_an_unconfigured_provider(bare: Bare, provider: str) -> None:
    refused = bare.client.put(
        "/api/v1/billing/auto-renew",
        json={
            "enabled": True,
            "threshold": "10",
            "amount": "25",
            "payment_method": "card:pm_card_visa",
            "provider": provider.lower(),
        },
        headers=bare.auth,
    )
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["field"] == "provider", body
    _names_the_variables(body, provider)
    bare.c.runner.catch_up()
    credits = bare.client.get("/api/v1/billing/credits", headers=bare.auth).json()
    assert credits["credits_auto_renew"]["enabled"] is False, credits
    # turning it off needs no provider
    off = bare.client.put("/api/v1/billing/auto-renew", json={"enabled": False}, headers=bare.auth)
    assert off.status_code == 200, off.text


def test_stripe_webhooks_unconfigured_name_their_variables(bare: Bare) -> None:
    refused = bare.client.post(
        "/api/v1/billing/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1"}
    )
    assert refused.status_code == 400, refused.text
    _names_the_variables(refused.json(), "Stripe")


@pytest.mark.parametrize("processor", ["stripe", "crypto", "afterdark"])
def test_the_service_names_the_variables_for_every_door(bare: Bare, processor: str) -> None:
    """gRPC, the auto-renew job and the HTTP route all start payments through the service."""
    request = PaymentRequest(
        owner="someone",
        amount=10_000_000,
        currency="USD",
        processor=processor,
        method={"type": "card", "token": "pm_card_visa"},
        key="k-1",
    )
    with pytest.raises(ProcessorNotConfiguredError) as refused:
        asyncio.run(bare.c.payments.create(request))
    assert refused.value.details["field"] == "provider"
    provider = {"stripe": "Stripe", "crypto": "Crypto", "afterdark": "AfterDark"}[processor]
    for variable in VARIABLES[provider]:
        assert variable in refused.value.message
