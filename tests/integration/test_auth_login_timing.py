"""Login takes as long for an unknown email as for an existing one (no enumeration by timing)."""

from __future__ import annotations

import dataclasses
import statistics
import time

import pytest

from infrastructure.settings import Settings
from tests.support.http import JWT_SECRET, test_client

PASSWORD = "correct-horse-battery"


@pytest.mark.usefixtures("real_argon2")  # the point is the cost of a real hash
def test_unknown_and_existing_emails_take_the_same_time(sqlite_settings: Settings) -> None:
    settings = dataclasses.replace(
        sqlite_settings,
        auth=dataclasses.replace(
            sqlite_settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
    )
    with test_client(settings) as client:
        body = {"email": "known@example.com", "password": PASSWORD, "name": "Known"}
        assert client.post("/api/v1/auth/register", json=body).status_code == 201

        def median(email: str) -> float:
            took = []
            for _ in range(7):
                started = time.perf_counter()
                response = client.post(
                    "/api/v1/auth/login", json={"email": email, "password": "wrong-password"}
                )
                took.append(time.perf_counter() - started)
                assert response.status_code == 401, response.text
            return statistics.median(took)

        median("warm-up@example.com")
        known, unknown = median("known@example.com"), median("nobody@example.com")
    assert 0.5 <= unknown / known <= 2, (known, unknown)
