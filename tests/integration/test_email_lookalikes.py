"""Look-alike emails: one normal form (NFKC, lower case, IDNA domain), mixed scripts refused,
UTS #39 confusables of an existing account refused, older accounts still working."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher

from infrastructure.settings import Settings
from tests.support.http import JWT_SECRET, test_client

PASSWORD = "correct-horse-battery"
FULLWIDTH_A = "\uff41"
CYRILLIC_A = "\u0430"
Client = Any


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
    )
    with test_client(tuned) as c:
        yield c


def register(client: Client, email: str) -> Any:
    body = {"email": email, "password": PASSWORD, "name": "U"}
    return client.post("/api/v1/auth/register", json=body)


def login(client: Client, email: str) -> Any:
    return client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})


def test_one_normal_form_for_sign_up_and_login(client: Client) -> None:
    alice = register(client, "alice@example.com").json()["user"]
    for same in (f"{FULLWIDTH_A}lice@example.com", "ALICE@Example.COM"):
        response = register(client, same)
        assert response.status_code == 409, response.text
        answer = login(client, same)
        assert answer.status_code == 200, answer.text
        assert answer.json()["user"]["id"] == alice["id"]
    idn = register(client, "j\u00fcrgen@B\u00dcCHER.de").json()["user"]
    assert idn["email"] == "j\u00fcrgen@b\u00fccher.de"
    assert login(client, "j\u00fcrgen@xn--bcher-kva.de").json()["user"]["id"] == idn["id"]


def test_mixed_scripts_are_refused_naming_email(client: Client) -> None:
    for email in (f"alice@ex{CYRILLIC_A}mple.com", f"{CYRILLIC_A}lice@example.com"):
        response = register(client, email)
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["field"] == "email"
        assert "mixes scripts" in body["detail"]
    assert register(client, "\u5c71\u7530@example.jp").status_code == 201  # Han alone is fine


def test_a_confusable_of_an_existing_account_is_409(client: Client) -> None:
    assert register(client, "ace@example.com").status_code == 201
    assert register(client, "alice@example.com").status_code == 201
    all_cyrillic = "\u0430\u0441\u0435@example.com"  # one script, looks like ace@
    for email in (all_cyrillic, "a1ice@example.com"):
        response = register(client, email)
        assert response.status_code == 409, response.text
        assert response.json()["field"] == "email"
    assert register(client, "alex@example.com").status_code == 201


def test_accounts_made_before_keep_working_and_are_compared(client: Client) -> None:
    """Rows as the earlier code stored them: no skeleton, an address it accepted."""
    c = client.app.state.container
    digest = PasswordHasher().hash(PASSWORD)
    older = ("carol@example.com", "dave@under_score.com", "mary@example.com", "rnary@example.com")
    for n, email in enumerate(older):  # mary@ and rnary@ look alike: both made before
        with c.db.transaction() as tx:
            tx.execute(
                "INSERT INTO users (id, email, name, password_hash, is_admin, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (str(uuid.uuid4()), email, "Old", digest, False, f"2026-01-0{n + 1}T00:00:00"),
            )
    response = register(client, "caro1@example.com")  # looks like the older carol@
    assert response.status_code == 409, response.text
    with c.db.read() as tx:
        marked = dict(tx.fetchall("SELECT email, email_skeleton FROM users"))
    assert marked["carol@example.com"]
    assert marked["mary@example.com"]  # the older look-alike holds the skeleton
    assert marked["rnary@example.com"] is None
    for email in ("carol@example.com", "Dave@under_score.com", *older[2:]):
        assert login(client, email).status_code == 200, email
