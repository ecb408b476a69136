"""API keys: shown once, revocation and expiry at once across processes, another user's key,
bad input.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from tests.support.http_auth import (
    CREDITS,
    Client,
    assert_problem,
    auth_settings,
    bearer,
    container_of,
    make_admin,
    new_key,
    user_with_token,
)


def test_api_key_is_shown_once_and_works_both_ways(client: Client) -> None:
    user, auth = user_with_token(client, "keys@example.com")
    created = new_key(client, auth, "ci runner")
    key = created["api_key"]
    assert key.startswith("gpx_")
    assert created["id"] in key
    assert created["name"] == "ci runner"
    assert created["revoked_at"] is None

    listing = client.get("/api/v1/auth/apikeys", headers=auth)
    assert listing.status_code == 200
    assert key not in listing.text
    assert key.split("_", 2)[2] not in listing.text  # not even the secret part
    (listed,) = listing.json()["api_keys"]
    assert listed == {k: created[k] for k in listed}
    assert "api_key" not in listed
    assert set(listed) == {"id", "name", "created_at", "expires_at", "revoked_at"}

    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        response = client.get(CREDITS, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["credits_remaining"] == "0.000000"
        keys = client.get("/api/v1/auth/apikeys", headers=headers).json()["api_keys"]
        assert [k["id"] for k in keys] == [created["id"]]
    assert container_of(client).users.by_id(user["id"]).email == "keys@example.com"


def test_wrong_secret_unknown_id_and_malformed_keys_are_401(client: Client) -> None:
    _, auth = user_with_token(client, "k401@example.com")
    key = new_key(client, auth)["api_key"]
    prefix, key_id, secret = key.split("_", 2)
    wrong_secret = f"{prefix}_{key_id}_{'A' * len(secret)}"
    unknown_id = f"{prefix}_{'0' * len(key_id)}_{secret}"
    # The right key is verified (and cached) first: a wrong secret for its id must not ride on it.
    assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 200
    for bad in (wrong_secret, unknown_id, "gpx_garbage", "gpx_", key + "x", key[:-1]):
        for headers in ({"X-API-Key": bad}, {"Authorization": f"Bearer {bad}"}):
            body = assert_problem(client.get(CREDITS, headers=headers), 401)
            assert body["error"] == "Invalid API key", (bad, body)
    assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 200


def test_revocation_takes_effect_at_once_even_after_use(client: Client) -> None:
    user, auth = user_with_token(client, "rev@example.com")
    created = new_key(client, auth)
    key = created["api_key"]
    # Used (and so verified and cached) through both headers first.
    for _ in range(3):
        assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 200
        assert client.get(CREDITS, headers=bearer(key)).status_code == 200
    response = client.delete(f"/api/v1/auth/apikey/{created['id']}", headers=auth)
    assert response.status_code == 200, response.text
    for headers in ({"X-API-Key": key}, bearer(key)):
        assert_problem(client.get(CREDITS, headers=headers), 401)
    listed = client.get("/api/v1/auth/apikeys", headers=auth).json()["api_keys"]
    assert listed[0]["id"] == created["id"]
    assert listed[0]["revoked_at"] is not None
    datetime.fromisoformat(listed[0]["revoked_at"])
    # Revoking again: there is no such active key.
    assert_problem(client.delete(f"/api/v1/auth/apikey/{created['id']}", headers=auth), 404)
    actions = [e[2] for e in container_of(client).users.security_events(user["id"])]
    assert actions.count("apikey.created") == 1
    assert actions.count("apikey.revoked") == 1


def test_revocation_and_role_change_by_another_process_are_honoured(
    client: Client, settings: Settings
) -> None:
    """The verified-key cache is per process: changes made by another one still count."""
    user, auth = user_with_token(client, "replica@example.com")
    admin_auth = make_admin(client, "root@example.com")
    admin_key = new_key(client, admin_auth)["api_key"]
    created = new_key(client, auth)
    for _ in range(2):  # verified and cached here
        assert client.get(CREDITS, headers={"X-API-Key": created["api_key"]}).status_code == 200
        response = client.get("/api/v1/admin/stats", headers={"X-API-Key": admin_key})
        assert response.status_code == 200
    other = bootstrap(auth_settings(settings))  # a second server process's container
    try:
        other.auth.keys.revoke(user["id"], created["id"], actor=user["id"])
        other.users.set_admin("root@example.com", False, actor="test")
    finally:
        other.close()
    assert_problem(client.get(CREDITS, headers={"X-API-Key": created["api_key"]}), 401)
    assert_problem(client.get("/api/v1/admin/stats", headers={"X-API-Key": admin_key}), 403)


def test_an_expired_key_stops_working_even_after_use(client: Client) -> None:
    _, auth = user_with_token(client, "exp@example.com")
    expires = int(time.time()) + 5  # room for a loaded machine before the first use
    response = client.post(
        "/api/v1/auth/apikey",
        headers=auth,
        json={
            "name": "short-lived",
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert datetime.fromisoformat(created["expires_at"]).timestamp() == expires
    assert client.get(CREDITS, headers={"X-API-Key": created["api_key"]}).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert_problem(client.get(CREDITS, headers={"X-API-Key": created["api_key"]}), 401)
    assert_problem(client.get(CREDITS, headers=bearer(created["api_key"])), 401)


def test_revoking_someone_elses_key_is_404_and_changes_nothing(client: Client) -> None:
    _, alice = user_with_token(client, "alice@example.com")
    _, mallory = user_with_token(client, "mallory@example.com")
    key = new_key(client, alice)
    response = client.delete(f"/api/v1/auth/apikey/{key['id']}", headers=mallory)
    assert_problem(response, 404)
    assert client.get(CREDITS, headers={"X-API-Key": key["api_key"]}).status_code == 200
    listed = client.get("/api/v1/auth/apikeys", headers=alice).json()["api_keys"]
    assert listed[0]["revoked_at"] is None
    assert client.get("/api/v1/auth/apikeys", headers=mallory).json()["api_keys"] == []
    # Nor can a key of Mallory's revoke Alice's key.
    mallory_key = new_key(client, mallory)["api_key"]
    response = client.delete(f"/api/v1/auth/apikey/{key['id']}", headers={"X-API-Key": mallory_key})
    assert_problem(response, 404)
    assert client.get(CREDITS, headers={"X-API-Key": key["api_key"]}).status_code == 200


def test_api_key_creation_refuses_bad_input(client: Client) -> None:
    _, auth = user_with_token(client, "kbad@example.com")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    cases: list[tuple[Any, str]] = [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "k" * 101}, "name"),
        ({"name": 7}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "k", "expires_at": past}, "expires_at"),
        ({"name": "k", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "k", "scopes": ["admin"]}, "scopes"),
    ]
    for body, field in cases:
        response = client.post("/api/v1/auth/apikey", headers=auth, json=body)
        assert_problem(response, {400}, field)
    assert client.get("/api/v1/auth/apikeys", headers=auth).json()["api_keys"] == []
    assert_problem(client.post("/api/v1/auth/apikey", json={"name": "anonymous"}), 401)


def test_an_expiry_beyond_year_9999_never_breaks_the_key_listing(client: Client) -> None:
    _, auth = user_with_token(client, "y10k@example.com")
    response = client.post(
        "/api/v1/auth/apikey",
        headers=auth,
        json={"name": "forever", "expires_at": "9999-12-31T23:59:59-14:00"},
    )
    assert response.status_code < 500, response.text
    listing = client.get("/api/v1/auth/apikeys", headers=auth)
    assert listing.status_code == 200, listing.text
