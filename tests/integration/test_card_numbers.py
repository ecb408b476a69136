"""Card numbers in free text and headers are refused (400 naming the field) and stored nowhere.

Each request below carries a card-shaped value in one place the service would keep (an
event, a table, a log line): the answer is a 400 whose ``field`` names that place, and
afterwards no table (events included), log record or answer holds the number. A canary
reason sent the same way proves the table dump does see what events carry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from domain.pan import CardNumberInTextError
from domain.services.payments import PaymentRequest
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.fake_servers.stripe import running_stripe
from tests.integration.test_models_support import dense_onnx
from tests.support.http import JWT_SECRET

PASSWORD = "correct-horse-battery"
CANARY = "canary-reason-kept-in-events"
# the named examples, and the same numbers as written by hand
PANS = {
    "4012888888881881": ["4012888888881881", "4012 8888 8888 1881", "4012-8888-8888-1881"],
    "5555555555554444": ["5555555555554444", "5555 5555 5555 4444", "5555-5555-5555-4444"],
    "378282246310005": ["378282246310005", "3782 822463 10005"],
    "6011111111111117": ["6011111111111117", "6011-1111-1111-1117"],
}


@dataclasses.dataclass
class World:
    client: TestClient[Any]
    c: Container
    user: dict[str, str]
    admin: dict[str, str]
    user_id: str


def _login(client: TestClient[Any], email: str) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "U"})
    token = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


@pytest.fixture
def world(settings: Settings, clock: FixedClock) -> Iterator[World]:
    with running_stripe() as stripe:
        tuned = dataclasses.replace(
            settings,
            auth=dataclasses.replace(
                settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
            ),
            payments=dataclasses.replace(
                settings.payments, stripe_secret_key=stripe.secret_key, stripe_api_base=stripe.url
            ),
        )
        c = bootstrap(tuned, clock=clock)
        try:
            with TestClient(create_app(c)) as client:
                user = _login(client, "payer@example.com")
                admin = _login(client, "boss@example.com")
                c.users.set_admin("boss@example.com", True, actor="test")
                user_id = c.users.by_email("payer@example.com").id
                yield World(client, c, user, admin, user_id)
        finally:
            c.close()


def _cases(w: World) -> list[tuple[str, str, dict[str, str], Any, str]]:
    """(method, path, headers, JSON body, the field the 400 must name)."""
    pay = {**w.user, "X-Billing": "Stripe", "X-Preferred-Payment": "card:pm_card_visa"}
    base = f"/api/v1/admin/users/{w.user_id}"
    return [
        (
            "POST",
            "/api/v1/billing/payment",
            {**pay, "X-Preferred-Payment": "card:pm_4012888888881881"},
            {"amount": "10"},
            "X-Preferred-Payment",
        ),
        (
            "POST",
            "/api/v1/billing/payment",
            {**pay, "Idempotency-Key": "5555555555554444"},
            {"amount": "10"},
            "Idempotency-Key",
        ),
        (
            "POST",
            f"{base}/credits",
            {**w.admin, "Idempotency-Key": "5555-5555-5555-4444"},
            {"amount": "5"},
            "Idempotency-Key",
        ),
        (
            "POST",
            f"{base}/credits",
            w.admin,
            {"amount": "5", "reason": "4012 8888 8888 1881"},
            "reason",
        ),
        (
            "PUT",
            f"{base}/limits",
            w.admin,
            {"limits": {"60min": "9"}, "reason": "378282246310005"},
            "reason",
        ),
        (
            "PUT",
            f"{base}/cap",
            w.admin,
            {"cap": "1", "reason": "card 6011-1111-1111-1117"},
            "reason",
        ),
        ("POST", f"{base}/guardrails/reset", w.admin, {"reason": "3782 822463 10005"}, "reason"),
        ("POST", "/api/v1/auth/apikey", w.user, {"name": "5555 5555 5555 4444"}, "name"),
        (
            "POST",
            "/api/v1/auth/register",
            {},
            {"email": "new@example.com", "password": PASSWORD, "name": "4012888888881881"},
            "name",
        ),
        (
            "PUT",
            "/api/v1/billing/auto-renew",
            w.user,
            {
                "enabled": True,
                "threshold": "1",
                "amount": "5",
                "payment_method": "pm_5555555555554444",
            },
            "payment_method",
        ),
        (
            "POST",
            "/api/v1/gpu/instances/sandbox/any-offer",
            {**w.user, "Idempotency-Key": "4012888888881881"},
            {},
            "Idempotency-Key",
        ),
        (
            "POST",
            "/api/v1/gpu/instances/sandbox/any-offer",
            w.user,
            {"env": {"NOTE": "6011111111111117"}},
            "env",
        ),
        (
            "POST",
            "/api/v1/auth/login",
            {"User-Agent": "agent 5555555555554444"},
            {"email": "payer@example.com", "password": PASSWORD},
            "User-Agent",
        ),
    ]


def _everything_stored(c: Container) -> str:
    """Every row of every table (the event store included), as text."""
    c.runner.catch_up()
    with c.db.read() as tx:
        tables = [
            r[0]
            for r in tx.fetchall(
                "SELECT name FROM sqlite_master WHERE type='table'"
                if c.db.dialect == "sqlite"
                else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        rows = {t: tx.fetchall(f'SELECT * FROM "{t}"') for t in tables}
    return json.dumps({t: [[str(v) for v in row] for row in r] for t, r in rows.items()})


def test_card_numbers_are_refused_naming_the_field_and_stored_nowhere(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    for method, path, headers, body, field in _cases(world):
        response = world.client.request(method, path, headers=headers, json=body)
        assert response.status_code == 400, (path, field, response.text)
        problem = response.json()
        assert problem["field"] == field, (path, problem)
        assert problem["title"] == "Bad Request"  # RFC 9457: the status phrase
        assert problem["detail"].startswith("Card number not accepted")
        answers.append(response.text)
    canary = world.client.post(
        f"/api/v1/admin/users/{world.user_id}/credits",
        json={"amount": "5", "reason": CANARY},
        headers=world.admin,
    )
    assert canary.status_code == 201, canary.text

    stored = _everything_stored(world.c)
    assert CANARY in stored  # the dump does see what events carry
    seen = "\n".join([stored, caplog.text, *answers])
    for digits, forms in PANS.items():
        for form in forms:
            assert form not in seen, form
        assert digits not in seen.replace(" ", "").replace("-", ""), digits


def test_ordinary_text_with_numbers_is_still_accepted(world: World) -> None:
    base = f"/api/v1/admin/users/{world.user_id}"
    granted = world.client.post(
        f"{base}/credits",
        json={"amount": "5", "reason": "ticket 1733580000123, order 2026-11-05 #42"},
        headers={**world.admin, "Idempotency-Key": "6f1f6d0e-3c8a-4f55-9a51-0b7f3e2d9c41"},
    )
    assert granted.status_code == 201, granted.text
    paid = world.client.post(
        "/api/v1/billing/payment",
        json={"amount": "10"},
        headers={
            **world.user,
            "X-Billing": "Stripe",
            "X-Preferred-Payment": "card:pm_card_visa",
            "Idempotency-Key": "order-00000000-0000-0000-0000-000000000000",
        },
    )
    assert paid.status_code == 201, paid.text


def test_the_aggregates_refuse_card_numbers_whatever_the_door(world: World) -> None:
    """The last line, under every interface (gRPC, agents, CLI): ledger text and payments."""
    ledger = world.c.ledger
    with pytest.raises(CardNumberInTextError) as caught:
        ledger.grant(world.user_id, 1_000_000, key="g-1", reason="4012 8888 8888 1881")
    assert caught.value.details["field"] == "reason"
    with pytest.raises(CardNumberInTextError):
        ledger.grant(world.user_id, 1_000_000, key="5555555555554444", reason="ok")
    request = PaymentRequest(
        owner=world.user_id,
        amount=10_000_000,
        currency="USD",
        processor="stripe",
        method={"type": "card", "token": "pm_card_visa"},
        key="5555-5555-5555-4444",
    )
    with pytest.raises(CardNumberInTextError) as caught:
        world.client.blocking_portal.call(world.c.payments.create, request)
    assert caught.value.details["field"] == "Idempotency-Key"
    assert "5555555555554444" not in _everything_stored(world.c).replace("-", "")


def test_model_upload_names_are_checked(world: World) -> None:
    for fields, filename, field in (
        ({"name": "5555 5555 5555 4444"}, "model.onnx", "name"),
        ({}, "4012888888881881.onnx", "name"),  # the default name is the file's stem
    ):
        response = world.client.post(
            "/api/v1/models/upload",
            files={"model": (filename, dense_onnx()[0], "application/octet-stream")},
            data=fields,
            headers=world.user,
        )
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
    kept = world.client.post(
        "/api/v1/models/upload",
        files={"model": ("model.onnx", dense_onnx()[0], "application/octet-stream")},
        data={"name": "dense-2026"},
        headers=world.user,
    )
    assert kept.status_code == 201, kept.text  # the same upload, with an ordinary name
    stored = _everything_stored(world.c)
    assert "5555555555554444" not in stored.replace(" ", "")
    assert "4012888888881881" not in stored
