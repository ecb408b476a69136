"""The REST auth matrix against the real app (Litestar's test client), on SQLite and PostgreSQL.

Identity (register, login, JWT, logout, API keys), per-user isolation, the admin role, guard
rails, paging and date filters, operations endpoints, the body limit, and the one error shape
(RFC 9457 problem details plus the seed's ``error`` field) on every failure.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from domain.guardrails import WINDOW_NAMES, GuardrailPolicy
from infrastructure.settings import Settings
from infrastructure.tokens import ISSUER
from interfaces.bootstrap import Container, bootstrap
from tests.support.http import JWT_SECRET, test_client

PASSWORD = "correct-horse-battery"
PROBLEM = "application/problem+json"
Client = Any  # litestar.testing.TestClient[Litestar]


# ------------------------------------------------------------------------------------ helpers


def _settings(settings: Settings, **groups: Any) -> Settings:
    tuned = dataclasses.replace(settings, **groups)
    auth = dataclasses.replace(tuned.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000)
    return dataclasses.replace(tuned, auth=auth)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with test_client(_settings(settings)) as c:
        yield c


def container_of(client: Client) -> Container:
    c: Container = client.app.state.container
    return c


def described(body: dict[str, Any]) -> str:
    """What a problem body says about the input (detail, field, per-field errors)."""
    parts = [str(body.get("detail", "")), str(body.get("field", ""))]
    for error in body.get("errors", []) or []:
        parts += [str(error.get("field", "")), str(error.get("message", ""))]
    return " ".join(parts)


def assert_problem(response: Any, status: int | set[int], *names: str) -> dict[str, Any]:
    """The response is a problem-details error with the given status naming ``names``."""
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == response.status_code
    for key in ("title", "detail", "error"):
        assert isinstance(body[key], str), body
        assert body[key], body
    for name in names:
        assert name in described(body), (name, body)
    return body


def register(client: Client, email: str, password: str = PASSWORD, name: str = "User") -> Any:
    response = client.post(
        "/api/v1/auth/register", json={"email": email, "password": password, "name": name}
    )
    assert response.status_code == 201, response.text
    return response.json()["user"]


def login(client: Client, email: str, password: str = PASSWORD) -> str:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["tokens"]["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user_with_token(client: Client, email: str) -> tuple[dict[str, Any], dict[str, str]]:
    user = register(client, email)
    return user, bearer(login(client, email))


def new_key(client: Client, headers: dict[str, str], name: str = "laptop") -> dict[str, Any]:
    response = client.post("/api/v1/auth/apikey", headers=headers, json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def make_admin(client: Client, email: str) -> dict[str, str]:
    register(client, email, name="Admin")
    container_of(client).users.set_admin(email)
    return bearer(login(client, email))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, JWT_SECRET, algorithms=["HS256"], issuer=ISSUER, options={"verify_exp": True}
    )
    return claims


CREDITS = "/api/v1/billing/credits"


# ----------------------------------------------------------------------------------- register


def test_register_creates_the_user_and_their_account(client: Client) -> None:
    response = client.post(
        "/api/v1/auth/register",
        json={"email": "Alice@Example.com", "password": PASSWORD, "name": " Alice "},
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    user = response.json()["user"]
    assert set(user) == {"id", "email", "name", "is_admin", "created_at"}
    assert user["email"] == "alice@example.com"
    assert user["name"] == "Alice"
    assert user["is_admin"] is False
    uuid.UUID(user["id"])
    datetime.fromisoformat(user["created_at"])
    assert PASSWORD not in response.text
    c = container_of(client)
    assert c.users.by_email("alice@example.com").id == user["id"]
    assert c.ledger.account(user["id"]).balance == 0  # the credit account is opened


def test_register_duplicate_email_is_409_and_creates_nothing(client: Client) -> None:
    register(client, "dup@example.com")
    for email in ("dup@example.com", "DUP@example.com "):
        response = client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": "another-password", "name": "Twin"},
        )
        body = assert_problem(response, 409)
        assert body["error"] == "A user with this email already exists"
    assert container_of(client).users.count() == 1
    login(client, "dup@example.com")  # the first password still works


def test_concurrent_registration_of_one_email_is_409_not_500(
    client: Client, request: pytest.FixtureRequest, settings: Settings
) -> None:
    """Another request inserts the same email between this one's check and its insert."""
    c = container_of(client)
    answer: list[Any] = []
    racer = threading.Thread(
        target=lambda: answer.append(
            client.post(
                "/api/v1/auth/register",
                json={"email": "race@example.com", "password": PASSWORD, "name": "Second"},
            )
        )
    )
    with c.db.transaction() as tx:  # the other request, not committed yet
        tx.execute(
            "INSERT INTO users (id, email, name, password_hash, is_admin, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), "race@example.com", "First", "x", False, "2026-01-01"),
        )
        racer.start()
        deadline = time.monotonic() + 10
        while settings.db.type == "postgres" and time.monotonic() < deadline:
            with c.db.read() as probe:  # wait until the racer is blocked on our row
                row = probe.fetchone(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )
            if row and row[0]:
                break
            time.sleep(0.02)
        else:
            time.sleep(0.3)  # SQLite: the racer waits for the write lock, or comes after
    racer.join(timeout=30)
    assert answer, "the racing request never finished"
    assert_problem(answer[0], 409)
    assert c.users.count() == 1


BAD_REGISTRATIONS: list[tuple[str, Any, str]] = [
    ("bad email", {"email": "not-an-address", "password": PASSWORD, "name": "N"}, "email"),
    ("email without dot", {"email": "a@localhost", "password": PASSWORD, "name": "N"}, "email"),
    ("short password", {"email": "s@example.com", "password": "short", "name": "N"}, "password"),
    ("missing name", {"email": "m@example.com", "password": PASSWORD}, "name"),
    ("missing password", {"email": "m@example.com", "name": "N"}, "password"),
    (
        "unknown field",
        {"email": "u@example.com", "password": PASSWORD, "name": "N", "is_admin": True},
        "is_admin",
    ),
    (
        "password not a string",
        {"email": "t@example.com", "password": 12345678, "name": "N"},
        "password",
    ),
    ("name null", {"email": "t@example.com", "password": PASSWORD, "name": None}, "name"),
    ("email array", {"email": ["x@example.com"], "password": PASSWORD, "name": "N"}, "email"),
    ("blank name", {"email": "b@example.com", "password": PASSWORD, "name": "   "}, "name"),
    ("long name", {"email": "l@example.com", "password": PASSWORD, "name": "n" * 201}, "name"),
    (
        "long email",
        {"email": "e" * 250 + "@example.com", "password": PASSWORD, "name": "N"},
        "email",
    ),
    ("long password", {"email": "p@example.com", "password": "p" * 1025, "name": "N"}, "password"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_REGISTRATIONS, ids=lambda v: v)
def test_register_refuses_bad_input_naming_the_field(
    client: Client, case: str, body: Any, field: str
) -> None:
    response = client.post("/api/v1/auth/register", json=body)
    assert_problem(response, {400}, field)
    assert container_of(client).users.count() == 0, case


DEEP = b'{"email": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # 10 KB, far under the body limit


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'"just a string"',
        b"",
        b"null",
        b'{"email": "a@example.com", "email": 5}',
        b"\xff\xfe{}",
        pytest.param(DEEP, id="nested 5000 deep"),
    ],
    ids=lambda raw: repr(raw[:20]),
)
def test_register_refuses_malformed_bodies(client: Client, raw: bytes) -> None:
    response = client.post(
        "/api/v1/auth/register", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, {400})
    assert container_of(client).users.count() == 0


# -------------------------------------------------------------------------------------- login


def test_login_returns_a_jwt_for_a_new_session(client: Client) -> None:
    user = register(client, "jwt@example.com")
    response = client.post(
        "/api/v1/auth/login", json={"email": "JWT@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["id"] == user["id"]
    tokens = body["tokens"]
    assert tokens["token_type"] == "Bearer"
    assert jwt.get_unverified_header(tokens["access_token"])["alg"] == "HS256"
    claims = claims_of(tokens["access_token"])
    assert claims["sub"] == user["id"]
    assert claims["sid"]
    lifetime = container_of(client).settings.auth.jwt_expiration_seconds
    assert claims["exp"] - claims["iat"] == lifetime
    expires = datetime.fromisoformat(tokens["expires_at"])
    assert int(expires.timestamp()) == claims["exp"]
    me = client.get(CREDITS, headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.text


def test_wrong_password_is_401_and_recorded(client: Client) -> None:
    user = register(client, "victim@example.com")
    events = container_of(client).users.security_events
    assert not [e for e in events(user["id"]) if e[2] == "login.failed"]
    response = client.post(
        "/api/v1/auth/login", json={"email": "victim@example.com", "password": "wrong-password"}
    )
    body = assert_problem(response, 401)
    assert body["error"] == "invalid credentials"
    assert response.headers.get("www-authenticate", "").startswith("Bearer")
    failed = [e for e in events(user["id"]) if e[2] == "login.failed"]
    assert len(failed) == 1
    assert "wrong-password" not in json.dumps(events(user["id"]))


def test_unknown_user_gets_the_same_401(client: Client) -> None:
    response = client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    body = assert_problem(response, 401)
    assert body["error"] == "invalid credentials"
    for bad in ({"email": "x", "password": "p"}, {"email": "nobody@example.com"}):
        assert_problem(client.post("/api/v1/auth/login", json=bad), {400, 401})


# ---------------------------------------------------------------------------------------- JWT


def _forge(claims: dict[str, Any], *, key: str = JWT_SECRET, **changes: Any) -> str:
    return jwt.encode({**claims, **changes}, key, algorithm="HS256")


def _hs512(claims: dict[str, Any]) -> str:
    """The right secret under another algorithm than the one the server pins."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, JWT_SECRET, algorithm="HS512")


def test_jwt_matrix(client: Client) -> None:
    alice, _ = user_with_token(client, "alice@example.com")
    register(client, "bob@example.com")
    token = login(client, "alice@example.com")
    claims = claims_of(token)
    header, payload, signature = token.split(".")

    # A token this test crafts with the right key and the live session is accepted, so the
    # refusals below come from the one thing each of them changes.
    assert client.get(CREDITS, headers=bearer(_forge(claims))).status_code == 200

    now = int(time.time())
    bob_id = container_of(client).users.by_email("bob@example.com").id
    none_header = b64json({"alg": "none", "typ": "JWT"})
    tampered_payload = b64json({**claims, "sub": bob_id})
    refused = {
        "alg none": f"{none_header}.{payload}.",
        "alg none with signature": f"{none_header}.{payload}.{signature}",
        "wrong key": _forge(claims, key="another-secret-0123456789-abcdefghijkl"),
        "expired": _forge(claims, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not yet valid": _forge(claims, nbf=now + 3600),
        "wrong issuer": _forge(claims, iss="someone-else"),
        "no session claim": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, JWT_SECRET, algorithm="HS256"
        ),
        "someone else's sub on my session": _forge(claims, sub=bob_id),
        "unknown session": _forge(claims, sid="no-such-session"),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "HS512 with the right secret": _hs512(claims),
        "garbage": "not-a-jwt",
        "three garbage parts": "a.b.c",
    }
    for case, forged in refused.items():
        response = client.get(CREDITS, headers=bearer(forged))
        assert response.status_code == 401, (case, response.text)
        assert_problem(response, 401)
        assert alice["id"] not in response.text, case

    missing = assert_problem(client.get(CREDITS), 401)
    assert missing["error"] == "Missing authorization"
    for value in ("Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer", "Bearer ", token, f"Token {token}"):
        response = client.get(CREDITS, headers={"Authorization": value})
        assert_problem(response, 401)
    # The genuine token still works after all that.
    assert client.get(CREDITS, headers=bearer(token)).status_code == 200


def test_logout_ends_that_session_at_once(client: Client) -> None:
    register(client, "out@example.com")
    first, second = login(client, "out@example.com"), login(client, "out@example.com")
    assert client.get(CREDITS, headers=bearer(first)).status_code == 200
    response = client.post("/api/v1/auth/logout", headers=bearer(first))
    assert response.status_code == 200, response.text
    assert_problem(client.get(CREDITS, headers=bearer(first)), 401)
    assert_problem(client.post("/api/v1/auth/logout", headers=bearer(first)), 401)
    assert client.get(CREDITS, headers=bearer(second)).status_code == 200


def test_logout_with_an_api_key_is_a_client_error(client: Client) -> None:
    _, auth = user_with_token(client, "keyout@example.com")
    key = new_key(client, auth)["api_key"]
    response = client.post("/api/v1/auth/logout", headers={"X-API-Key": key})
    assert_problem(response, {400})
    assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 200


# ----------------------------------------------------------------------------------- API keys


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
    other = bootstrap(_settings(settings))  # a second server process's container
    try:
        other.auth.keys.revoke(user["id"], created["id"], actor=user["id"])
        other.users.set_admin("root@example.com", False, actor="test")
    finally:
        other.close()
    assert_problem(client.get(CREDITS, headers={"X-API-Key": created["api_key"]}), 401)
    assert_problem(client.get("/api/v1/admin/stats", headers={"X-API-Key": admin_key}), 403)


def test_an_expired_key_stops_working_even_after_use(client: Client) -> None:
    _, auth = user_with_token(client, "exp@example.com")
    expires = int(time.time()) + 2
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


# ---------------------------------------------------------------------------------- isolation


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


# -------------------------------------------------------------------------------------- admin


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


# -------------------------------------------------------------------------------- guard rails


SPEND_CHECK = "/api/v1/guardrails/spending/check"


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
        _settings(settings, ledger=dataclasses.replace(settings.ledger, guardrails=policy))
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


@pytest.mark.parametrize(("case", "raw"), BAD_COSTS, ids=[c for c, _ in BAD_COSTS])
def test_spending_check_refuses_bad_costs(settings: Settings, case: str, raw: bytes) -> None:
    with test_client(_settings(settings)) as client:
        user, auth = user_with_token(client, "costs@example.com")
        container_of(client).ledger.grant(user["id"], 10_000_000, key="fund", reason="fund")
        response = client.post(
            SPEND_CHECK, content=raw, headers={**auth, "content-type": "application/json"}
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


# ---------------------------------------------------------------------- transactions and usage


def test_transactions_page_newest_first(client: Client) -> None:
    user, auth = user_with_token(client, "pages@example.com")
    c = container_of(client)
    for i in range(1, 6):
        c.ledger.grant(user["id"], i * 1_000_000, key=f"g{i}", reason=f"grant {i}")
    c.runner.catch_up()

    seen: list[dict[str, Any]] = []
    pages = 0
    url = "/api/v1/billing/transactions?limit=2"
    while True:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["transactions"]) <= 2
        seen += page["transactions"]
        if page["next_before"] is None:
            break
        assert page["next_before"] == page["transactions"][-1]["id"]
        url = f"/api/v1/billing/transactions?limit=2&before={page['next_before']}"
        assert pages < 10
    assert pages == 3
    ids = [t["id"] for t in seen]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5
    assert [t["amount"] for t in seen] == [
        "5.000000",
        "4.000000",
        "3.000000",
        "2.000000",
        "1.000000",
    ]
    first = seen[0]
    assert set(first) == {"id", "type", "amount", "hold_id", "reason", "reference", "created_at"}
    assert first["reason"] == "grant 5"
    datetime.fromisoformat(first["created_at"])
    everything = client.get("/api/v1/billing/transactions", headers=auth).json()
    assert len(everything["transactions"]) == 5
    assert everything["next_before"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("before=0", "before"),
        ("before=-3", "before"),
        ("before=abc", "before"),
    ],
)
def test_transactions_refuse_bad_paging(client: Client, query: str, field: str) -> None:
    _, auth = user_with_token(client, "badpage@example.com")
    response = client.get(f"/api/v1/billing/transactions?{query}", headers=auth)
    assert_problem(response, 400, field)


def test_transactions_refuse_a_cursor_beyond_64_bits(
    client: Client, request: pytest.FixtureRequest, settings: Settings
) -> None:
    _, auth = user_with_token(client, "bigcursor@example.com")
    response = client.get(
        "/api/v1/billing/transactions?before=99999999999999999999999", headers=auth
    )
    assert response.status_code < 500, response.text


def test_usage_filters_by_day(client: Client) -> None:
    user, auth = user_with_token(client, "usage@example.com")
    c = container_of(client)
    c.ledger.grant(user["id"], 4_000_000, key="u1", reason="usage")
    c.runner.catch_up()
    today = datetime.now(UTC).date()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)

    days = client.get("/api/v1/usage", headers=auth).json()["days"]
    assert len(days) == 1
    assert days[0]["day"] == today.isoformat()
    assert days[0]["granted"] == "4.000000"
    assert set(days[0]) == {"day", "spent", "requests", "granted", "debited"}
    inside = client.get(f"/api/v1/usage?since={yesterday}&until={tomorrow}", headers=auth)
    assert [d["day"] for d in inside.json()["days"]] == [today.isoformat()]
    same_day = client.get(f"/api/v1/usage?since={today}&until={today}", headers=auth)
    assert len(same_day.json()["days"]) == 1
    after = client.get(f"/api/v1/usage?since={tomorrow}", headers=auth)
    assert after.json()["days"] == []
    before = client.get(f"/api/v1/usage?until={yesterday}", headers=auth)
    assert before.json()["days"] == []

    bad = [
        (f"since={tomorrow}&until={yesterday}", "since"),
        ("since=2026-13-01", "since"),
        ("since=yesterday", "since"),
        ("until=2026-02-30", "until"),
        ("until=20260101", "until"),
    ]
    for query, field in bad:
        assert_problem(client.get(f"/api/v1/usage?{query}", headers=auth), {400}, field)


# --------------------------------------------------------------------------------- operations


def test_health_ready_and_metrics(client: Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    datetime.fromisoformat(health.json()["timestamp"])

    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert set(body["checks"]["projection_lag"]) >= {"balances", "transactions"}

    client.get(CREDITS)  # a 401, counted too
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "gpuproxy_http_requests_total" in text
    assert 'route="/api/v1/billing/credits",status="401"' in text
    assert "gpuproxy_http_request_duration_seconds_bucket" in text
    assert "gpuproxy_projection_lag_events" in text


def test_a_body_over_the_limit_is_413(settings: Settings) -> None:
    with test_client(
        _settings(settings, http=dataclasses.replace(settings.http, max_body_bytes=4096))
    ) as client:
        big = json.dumps({"email": "big@example.com", "password": "p" * 5000, "name": "B"})
        response = client.post(
            "/api/v1/auth/register", content=big, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413)
        assert container_of(client).users.count() == 0

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
            yield b'{"email": "chunked@example.com", "password": "'
            for _ in range(50):
                yield b"p" * 100
            yield b'", "name": "C"}'

        response = client.post(
            "/api/v1/auth/register", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(response, 413)
        assert container_of(client).users.count() == 0
        small = client.post(
            "/api/v1/auth/register",
            json={"email": "small@example.com", "password": PASSWORD, "name": "S"},
        )
        assert small.status_code == 201


def test_default_body_limit_is_one_mebibyte(client: Client) -> None:
    raw = b'{"email": "x@example.com", "password": "' + b"p" * 1_100_000 + b'", "name": "x"}'
    response = client.post(
        "/api/v1/auth/register", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


def test_rate_limit_is_429_with_headers(settings: Settings) -> None:
    tuned = _settings(settings)
    limited = dataclasses.replace(
        tuned, auth=dataclasses.replace(tuned.auth, rate_limit_per_minute=3)
    )
    with test_client(limited) as client:
        _, auth = user_with_token(client, "busy@example.com")
        responses = [client.get(CREDITS, headers=auth) for _ in range(5)]
        windows = {r.headers["X-RateLimit-Reset"] for r in responses}
        if len(windows) > 1:
            pytest.skip("the minute turned during the test")
        assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
        assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0", "0"]
        assert all(r.headers["X-RateLimit-Limit"] == "3" for r in responses)
        body = assert_problem(responses[-1], 429)
        assert body["error"] == "Rate limit exceeded"
        assert int(responses[-1].headers["Retry-After"]) >= 1


def test_every_error_is_problem_json(client: Client) -> None:
    _, auth = user_with_token(client, "errors@example.com")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/v1/no-such-route", {}),
        ("DELETE", "/api/v1/billing/credits", {"headers": auth}),
        ("GET", CREDITS, {}),
        ("GET", CREDITS, {"headers": {"X-API-Key": "gpx_nope"}}),
        ("GET", "/api/v1/admin/stats", {"headers": auth}),
        ("POST", SPEND_CHECK, {"headers": auth, "json": {"estimated_cost": "1"}}),
        ("POST", SPEND_CHECK, {"headers": auth, "json": {"estimated_cost": "x"}}),
        ("POST", SPEND_CHECK, {"headers": auth, "json": {"estimated_cost": "-1"}}),
        ("POST", "/api/v1/auth/login", {"json": {"email": "errors@example.com", "password": "x"}}),
        ("DELETE", "/api/v1/auth/apikey/0123456789abcdef", {"headers": auth}),
        ("POST", "/api/v1/auth/register", {"content": b"{", "headers": {"content-type": "x"}}),
    ]
    statuses = set()
    for method, path, kwargs in requests:
        response = client.request(method, path, **kwargs)
        assert response.status_code >= 400, (method, path, response.text)
        body = assert_problem(response, response.status_code)
        assert body["error"] in body["detail"]  # the specific words; the title is the phrase
        statuses.add(response.status_code)
    assert statuses >= {400, 401, 402, 403, 404, 405}


# ------------------------------------------------------------------------ NUL bytes (Postgres)


def _nul_requests(user_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    nul = "x\x00y"
    admin = f"/api/v1/admin/users/{user_id}"
    register_url, login_url = "/api/v1/auth/register", "/api/v1/auth/login"
    nul_email = f"{nul}@example.com"
    return [
        ("POST", register_url, {"json": {"email": "n@x.com", "password": PASSWORD, "name": nul}}),
        ("POST", register_url, {"json": {"email": nul_email, "password": PASSWORD, "name": "N"}}),
        ("POST", login_url, {"json": {"email": nul_email, "password": PASSWORD}}),
        ("POST", "/api/v1/auth/apikey", {"json": {"name": nul}}),
        ("DELETE", "/api/v1/auth/apikey/%00", {}),
        ("GET", "/api/v1/admin/users/%00", {}),
        ("POST", f"{admin}/credits", {"json": {"amount": "1", "reason": nul}}),
        ("PUT", f"{admin}/limits", {"json": {"limits": {"60min": "9"}, "reason": nul}}),
        ("POST", f"{admin}/guardrails/reset", {"json": {"reason": nul}}),
        ("PUT", f"{admin}/cap", {"json": {"cap": "1", "reason": nul}}),
    ]


def test_nul_characters_never_cause_a_500_or_a_stuck_projection(
    client: Client, request: pytest.FixtureRequest, settings: Settings
) -> None:
    admin_auth = make_admin(client, "root@example.com")
    admin_id = container_of(client).users.by_email("root@example.com").id
    failures = []
    for method, path, kwargs in _nul_requests(admin_id):
        response = client.request(method, path, headers=admin_auth, **kwargs)
        if response.status_code >= 500:
            failures.append(f"{method} {path}: {response.status_code}")
    c = container_of(client)
    try:
        c.runner.catch_up()
    except Exception as exc:
        failures.append(f"projection catch-up: {type(exc).__name__}: {exc}")
    lag = c.runner.lag()
    if any(lag.values()):
        failures.append(f"projection lag stays {lag}")
    assert not failures, failures
