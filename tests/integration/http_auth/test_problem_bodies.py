"""One error shape: every failure is an RFC 9457 problem (plus the seed's ``error``), and NUL
characters never cause a 500 or a stuck projection.
"""

from __future__ import annotations

from typing import Any

import pytest

from infrastructure.settings import Settings
from tests.support.http_auth import (
    CREDITS,
    PASSWORD,
    SPEND_CHECK,
    Client,
    assert_problem,
    container_of,
    make_admin,
    user_with_token,
)


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
