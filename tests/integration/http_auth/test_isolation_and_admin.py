"""Per-user isolation of money, and the admin role: its routes, revocation at once, grants
(idempotent per key), validated input, guard-rail resets with a recorded reason.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.http_auth import (
    CREDITS,
    Client,
    assert_problem,
    container_of,
    make_admin,
    new_key,
    user_with_token,
)


def test_every_user_sees_only_their_own_money(client: Client) -> None:
    alice, alice_auth = user_with_token(client, "alice@example.com")
    bob, bob_auth = user_with_token(client, "bob@example.com")
    c = container_of(client)
    c.ledger.grant(alice["id"], 1_500_000, key="a1", reason="alice-grant")
    c.ledger.grant(bob["id"], 2_250_000, key="b1", reason="bob-grant")
    c.ledger.grant(bob["id"], 750_000, key="b2", reason="bob-grant-2")
    c.runner.catch_up()

    alice_credits = client.get(CREDITS, headers=alice_auth).json()
    bob_credits = client.get(CREDITS, headers=bob_auth).json()
    assert alice_credits["credits_remaining"] == "1.500000"
    assert alice_credits["credits_total"] == "1.500000"
    assert bob_credits["credits_remaining"] == "3.000000"

    alice_tx = client.get("/api/v1/billing/transactions", headers=alice_auth).json()
    bob_tx = client.get("/api/v1/billing/transactions", headers=bob_auth).json()
    assert [(t["amount"], t["reason"]) for t in alice_tx["transactions"]] == [
        ("1.500000", "alice-grant")
    ]
    assert sorted(t["reason"] for t in bob_tx["transactions"]) == ["bob-grant", "bob-grant-2"]
    assert not {t["id"] for t in alice_tx["transactions"]} & {
        t["id"] for t in bob_tx["transactions"]
    }

    alice_usage = client.get("/api/v1/usage", headers=alice_auth).json()["days"]
    assert [d["granted"] for d in alice_usage] == ["1.500000"]
    spending = client.get("/api/v1/guardrails/spending", headers=alice_auth).json()
    assert spending["user_id"] == alice["id"]

    # The same holds through API keys, and keys of one user never list for the other.
    bob_key = new_key(client, bob_auth)["api_key"]
    via_key = client.get(CREDITS, headers={"X-API-Key": bob_key}).json()
    assert via_key["credits_remaining"] == "3.000000"
    assert client.get("/api/v1/auth/apikeys", headers=alice_auth).json()["api_keys"] == []
    assert bob["id"] not in client.get(CREDITS, headers=alice_auth).text


def _admin_routes(user_id: str) -> list[tuple[str, str, Any, int]]:
    base = f"/api/v1/admin/users/{user_id}"
    return [
        ("GET", "/api/v1/admin/users", None, 200),
        ("GET", base, None, 200),
        ("GET", "/api/v1/admin/stats", None, 200),
        ("POST", f"{base}/credits", {"amount": "5.00", "reason": "welcome"}, 201),
        ("PUT", f"{base}/limits", {"limits": {"60min": "10.00"}, "reason": "trial"}, 200),
        ("POST", f"{base}/guardrails/reset", {"reason": "ticket 42"}, 200),
        ("PUT", f"{base}/cap", {"cap": "2.50", "reason": "trusted"}, 200),
        ("PUT", f"{base}/role", {"is_admin": True}, 200),
    ]


def test_admin_routes_need_the_admin_role(client: Client) -> None:
    user, user_auth = user_with_token(client, "plain@example.com")
    user_key = new_key(client, user_auth)["api_key"]
    admin_auth = make_admin(client, "root@example.com")
    c = container_of(client)

    for method, path, body, _ in _admin_routes(user["id"]):
        response = client.request(method, path, json=body)
        assert_problem(response, 401)
        for headers in (user_auth, {"X-API-Key": user_key}):
            response = client.request(method, path, json=body, headers=headers)
            body_json = assert_problem(response, 403)
            assert body_json["error"] == "Admin role required"
    # The refused requests changed nothing.
    view = c.ledger.account(user["id"])
    assert (view.balance, view.cap, view.limits) == (0, 0, {})
    assert not c.users.by_id(user["id"]).is_admin

    for method, path, body, status in _admin_routes(user["id"]):
        response = client.request(method, path, json=body, headers=admin_auth)
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["content-type"].startswith("application/json")

    view = c.ledger.account(user["id"])
    assert view.balance == 5_000_000
    assert view.cap == 2_500_000
    assert view.limits == {"60MIN": 10_000_000}
    # The role change applies to the very next request, with a token issued before it.
    assert client.get("/api/v1/admin/users", headers=user_auth).status_code == 200
    assert client.get("/api/v1/admin/users", headers={"X-API-Key": user_key}).status_code == 200
    actions = [e[2] for e in c.users.security_events(user["id"])]
    assert "role.admin_granted" in actions

    listing = client.get("/api/v1/admin/users", headers=admin_auth).json()["users"]
    assert {u["email"] for u in listing} == {"plain@example.com", "root@example.com"}
    detail = client.get(f"/api/v1/admin/users/{user['id']}", headers=admin_auth).json()
    assert detail["user"]["id"] == user["id"]
    assert set(detail["credits"]) >= {"credits_remaining", "credits_total", "credits_cap"}
    stats = client.get("/api/v1/admin/stats", headers=admin_auth).json()
    assert stats["users"] == 2
    assert stats["events"] >= 5


def test_revoking_the_admin_role_takes_effect_at_once(client: Client) -> None:
    admin_auth = make_admin(client, "root@example.com")
    other_auth = make_admin(client, "second@example.com")
    second = container_of(client).users.by_email("second@example.com")
    assert client.get("/api/v1/admin/stats", headers=other_auth).status_code == 200
    response = client.put(
        f"/api/v1/admin/users/{second.id}/role", headers=admin_auth, json={"is_admin": False}
    )
    assert response.status_code == 200, response.text
    assert response.json()["user"]["is_admin"] is False
    assert_problem(client.get("/api/v1/admin/stats", headers=other_auth), 403)


def test_admin_grant_is_idempotent_per_key(client: Client) -> None:
    user, user_auth = user_with_token(client, "paid@example.com")
    admin_auth = make_admin(client, "root@example.com")
    path = f"/api/v1/admin/users/{user['id']}/credits"
    headers = {**admin_auth, "Idempotency-Key": "grant-0001"}
    first = client.post(path, headers=headers, json={"amount": "12.34"})
    second = client.post(path, headers=headers, json={"amount": "12.34"})
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert first.json()["applied"] is True
    assert second.json()["applied"] is False
    assert second.json()["credits_remaining"] == "12.340000"
    c = container_of(client)
    assert c.ledger.account(user["id"]).balance == 12_340_000
    # The same key with another amount is a conflict, not a second grant.
    assert_problem(client.post(path, headers=headers, json={"amount": "99"}), 409)
    # Another key is another grant.
    third = client.post(
        path, headers={**admin_auth, "Idempotency-Key": "grant-0002"}, json={"amount": "0.66"}
    )
    assert third.json()["applied"] is True
    assert c.ledger.account(user["id"]).balance == 13_000_000
    c.runner.catch_up()
    assert client.get(CREDITS, headers=user_auth).json()["credits_total"] == "13.000000"


def test_admin_input_is_validated(client: Client) -> None:
    user, _ = user_with_token(client, "target@example.com")
    admin_auth = make_admin(client, "root@example.com")
    base = f"/api/v1/admin/users/{user['id']}"
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", f"{base}/credits", {"amount": "-5"}, "amount"),
        ("POST", f"{base}/credits", {"amount": "0"}, "amount"),
        ("POST", f"{base}/credits", {"amount": "NaN"}, "amount"),
        ("POST", f"{base}/credits", {"amount": "1.0000001"}, "amount"),
        ("POST", f"{base}/credits", {"amount": True}, "amount"),
        ("POST", f"{base}/credits", {"amount": "5", "reason": "r" * 501}, "reason"),
        ("POST", f"{base}/credits", {}, "amount"),
        ("PUT", f"{base}/limits", {"limits": {"61min": "5"}}, "window"),
        ("PUT", f"{base}/limits", {"limits": {"60min": "-5"}}, "60MIN"),
        ("PUT", f"{base}/limits", {"limits": {"60min": "Infinity"}}, "60MIN"),
        ("PUT", f"{base}/limits", {"limits": {}}, "limits"),
        ("PUT", f"{base}/cap", {"cap": "-1"}, "cap"),
        ("PUT", f"{base}/cap", {"cap": "1e400"}, "cap"),
        ("PUT", f"{base}/role", {"is_admin": "yes"}, "is_admin"),
        ("POST", f"{base}/guardrails/reset", {"reason": "x", "window": "2min"}, "window"),
    ]
    for method, path, body, field in cases:
        response = client.request(method, path, json=body, headers=admin_auth)
        assert_problem(response, {400}, field)
    headers = {**admin_auth, "Idempotency-Key": "k" * 201}
    assert_problem(client.post(f"{base}/credits", json={"amount": "1"}, headers=headers), 400)
    missing = str(uuid.uuid4())
    for method, path, body, _ in _admin_routes(missing):
        if missing not in path:
            continue
        response = client.request(method, path, json=body, headers=admin_auth)
        assert_problem(response, 404)
    view = container_of(client).ledger.account(user["id"])
    assert (view.balance, view.cap, view.limits) == (0, 0, {})


def test_guardrail_reset_needs_a_recorded_reason(client: Client) -> None:
    user, _ = user_with_token(client, "reset@example.com")
    admin_auth = make_admin(client, "root@example.com")
    path = f"/api/v1/admin/users/{user['id']}/guardrails/reset"
    for body in ({}, {"reason": ""}, {"window": "60min"}, {"reason": None}):
        assert_problem(client.post(path, headers=admin_auth, json=body), 400, "reason")
    c = container_of(client)
    before = len(c.ledger.history(user["id"]))
    response = client.post(
        path, headers=admin_auth, json={"reason": "refund of a runaway job", "window": "60min"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["windows"] == ["60MIN"]
    history = c.ledger.history(user["id"])
    assert len(history) == before + 1
    assert history[-1].data["reason"] == "refund of a runaway job"
    assert "root@example.com" in history[-1].data["actor"]


def test_users_cannot_reset_their_own_windows(client: Client) -> None:
    user, auth = user_with_token(client, "self@example.com")
    path = f"/api/v1/admin/users/{user['id']}/guardrails/reset"
    assert_problem(client.post(path, headers=auth, json={"reason": "please"}), 403)
