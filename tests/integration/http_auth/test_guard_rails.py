"""Guard rails over HTTP: the spending check (200 allowed, 402 with violations, bad costs
naming the field) and the spending view.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from domain.guardrails import WINDOW_NAMES, GuardrailPolicy
from infrastructure.settings import Settings
from tests.support.http import test_client
from tests.support.http_auth import (
    SPEND_CHECK,
    Client,
    assert_problem,
    auth_settings,
    container_of,
    user_with_token,
)


def test_spending_check_allows_a_funded_cost_and_changes_nothing(client: Client) -> None:
    user, auth = user_with_token(client, "funded@example.com")
    c = container_of(client)
    c.ledger.grant(user["id"], 10_000_000, key="fund", reason="fund")
    version = c.ledger.account(user["id"]).version
    for cost in ("2.50", 2, "10", "0.000001"):
        response = client.post(SPEND_CHECK, headers=auth, json={"estimated_cost": cost})
        assert response.status_code == 200, (cost, response.text)
        body = response.json()
        assert body["allowed"] is True
        assert set(body["spent"]) == set(WINDOW_NAMES)
    assert c.ledger.account(user["id"]).version == version
    body = assert_problem(
        client.post(SPEND_CHECK, headers=auth, json={"estimated_cost": "10.01"}), 402
    )
    assert body["error"] == "Insufficient credits"
    assert body["requested"] == "10.010000"


def test_spending_check_over_a_window_limit_is_402_with_violations(settings: Settings) -> None:
    policy = GuardrailPolicy(enabled=True, limits={"60MIN": 5_000_000})
    with test_client(
        auth_settings(settings, ledger=dataclasses.replace(settings.ledger, guardrails=policy))
    ) as client:
        user, auth = user_with_token(client, "limited@example.com")
        c = container_of(client)
        c.ledger.grant(user["id"], 10_000_000, key="fund", reason="fund")

        allowed = client.post(SPEND_CHECK, headers=auth, json={"estimated_cost": "5.00"})
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["X-GuardRails-Enabled"] == "true"
        assert "X-GuardRails-Exceeded" not in allowed.headers

        response = client.post(SPEND_CHECK, headers=auth, json={"estimated_cost": "6.00"})
        body = assert_problem(response, 402)
        assert body["error"] == "Spending limit exceeded"
        assert body["violations"] == [
            {
                "window": "60MIN",
                "limit": "5.000000",
                "spent": "0.000000",
                "held": "0.000000",
                "requested": "6.000000",
            }
        ]
        assert set(body["spent"]) == {"60MIN"}
        assert response.headers["X-GuardRails-Exceeded"] == "true"

        # Spend counts against the window: 3.00 spent leaves room for 2.00, not 2.50.
        c.ledger.charge(user["id"], 3_000_000, key="spend-1", reason="gpu time")
        ok = client.post(SPEND_CHECK, headers=auth, json={"estimated_cost": "2.00"})
        assert ok.status_code == 200, ok.text
        over = client.post(SPEND_CHECK, headers=auth, json={"estimated_cost": "2.50"})
        body = assert_problem(over, 402)
        assert body["violations"][0]["spent"] == "3.000000"
        assert body["spent"] == {"60MIN": "3.000000"}
        assert c.ledger.account(user["id"]).balance == 7_000_000

        c.runner.catch_up()
        spending = client.get("/api/v1/guardrails/spending", headers=auth)
        assert spending.status_code == 200
        view = spending.json()
        assert view["guard_rails_enabled"] is True
        assert view["limits"] == {"60MIN": "5.000000"}
        assert view["window_spent"]["60MIN"] == "3.000000"
        assert view["remaining"] == {"60MIN": "2.000000"}
        assert view["exceeded"] == []
        assert spending.headers["X-GuardRails-60MIN"] == "3.000000"


BAD_COSTS: list[tuple[str, bytes]] = [
    ("negative", b'{"estimated_cost": -1}'),
    ("negative string", b'{"estimated_cost": "-0.01"}'),
    ("zero", b'{"estimated_cost": 0}'),
    ("zero string", b'{"estimated_cost": "0.00"}'),
    ("NaN", b'{"estimated_cost": "NaN"}'),
    ("Infinity", b'{"estimated_cost": "Infinity"}'),
    ("-Infinity", b'{"estimated_cost": "-Infinity"}'),
    ("1e400 string", b'{"estimated_cost": "1e400"}'),
    ("huge", b'{"estimated_cost": "1000000001"}'),
    ("abc", b'{"estimated_cost": "abc"}'),
    ("empty string", b'{"estimated_cost": ""}'),
    ("seven decimals", b'{"estimated_cost": "0.0000001"}'),
    ("seven decimals number", b'{"estimated_cost": 1.1234567}'),
    ("true", b'{"estimated_cost": true}'),
    ("false", b'{"estimated_cost": false}'),
    ("null", b'{"estimated_cost": null}'),
    ("list", b'{"estimated_cost": [1]}'),
    ("object", b'{"estimated_cost": {"usd": 1}}'),
    ("missing", b"{}"),
    ("unknown extra", b'{"estimated_cost": "1", "currency": "EUR"}'),
]


@pytest.fixture(scope="module")
def funded(shared_client: Client) -> dict[str, str]:
    """A funded user's headers on the module's shared app (the bad costs only read)."""
    user, auth = user_with_token(shared_client, "costs@example.com")
    container_of(shared_client).ledger.grant(user["id"], 10_000_000, key="fund", reason="fund")
    return auth


@pytest.mark.parametrize(("case", "raw"), BAD_COSTS, ids=[c for c, _ in BAD_COSTS])
def test_spending_check_refuses_bad_costs(
    shared_client: Client, funded: dict[str, str], case: str, raw: bytes
) -> None:
    response = shared_client.post(
        SPEND_CHECK, content=raw, headers={**funded, "content-type": "application/json"}
    )
    field = "currency" if case == "unknown extra" else "estimated_cost"
    assert_problem(response, {400}, field)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E+309"])
def test_spending_check_names_the_field_for_an_out_of_range_number(
    client: Client, number: bytes
) -> None:
    """A number beyond a float's range (Litestar decodes bodies untyped first) is refused by
    the field's own validation, which names it (interfaces/http/json_body.py)."""
    _, auth = user_with_token(client, "range@example.com")
    response = client.post(
        SPEND_CHECK,
        content=b'{"estimated_cost": ' + number + b"}",
        headers={**auth, "content-type": "application/json"},
    )
    assert_problem(response, {400}, "estimated_cost")


def test_an_out_of_range_number_in_a_float_field_names_it_too(client: Client) -> None:
    _, auth = user_with_token(client, "range-float@example.com")
    response = client.post(
        "/api/v1/billing/payment",
        content=b'{"amount": 1e400, "currency": "USD"}',
        headers={**auth, "content-type": "application/json", "X-Billing": "Stripe"},
    )
    assert_problem(response, {400}, "amount")


def test_malformed_json_is_still_a_plain_400(client: Client) -> None:
    _, auth = user_with_token(client, "malformed@example.com")
    for raw in (b'{"estimated_cost": 1e400', b'{"estimated_cost": 1e400,}'):
        response = client.post(
            SPEND_CHECK, content=raw, headers={**auth, "content-type": "application/json"}
        )
        assert response.status_code == 400, response.text


def test_spending_view_shape(client: Client) -> None:
    user, auth = user_with_token(client, "shape@example.com")
    response = client.get("/api/v1/guardrails/spending", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "user_id",
        "guard_rails_enabled",
        "window_spent",
        "held",
        "limits",
        "remaining",
        "exceeded",
        "timestamp",
    }
    assert body["user_id"] == user["id"]
    assert body["guard_rails_enabled"] is False
    assert list(body["window_spent"]) == list(WINDOW_NAMES)
    assert set(body["window_spent"].values()) == {"0.000000"}
    assert body["limits"] == body["remaining"] == {}
    assert body["held"] == "0.000000"
    assert body["exceeded"] == []
    datetime.fromisoformat(body["timestamp"])
    assert response.headers["X-GuardRails-Enabled"] == "true"
    assert_problem(client.get("/api/v1/guardrails/spending"), 401)
