"""Registration: the account it creates, duplicates and races (409), and bad or malformed
input (400 naming the field, nothing created).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from infrastructure.settings import Settings
from tests.support.http_auth import (
    PASSWORD,
    Client,
    assert_problem,
    container_of,
    login,
    register,
)


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
    shared_client: Client, case: str, body: Any, field: str
) -> None:
    response = shared_client.post("/api/v1/auth/register", json=body)
    assert_problem(response, {400}, field)
    assert container_of(shared_client).users.count() == 0, case


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
def test_register_refuses_malformed_bodies(shared_client: Client, raw: bytes) -> None:
    response = shared_client.post(
        "/api/v1/auth/register", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, {400})
    assert container_of(shared_client).users.count() == 0
