"""Helpers for the REST auth matrix (``tests/integration/http_auth/``): users, tokens, API
keys and the one problem-details shape every failure has."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import jwt

from infrastructure.identity.tokens import ISSUER
from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.support.http import JWT_SECRET

PASSWORD = "correct-horse-battery"
PROBLEM = "application/problem+json"
Client = Any  # litestar.testing.TestClient[Litestar]


def auth_settings(settings: Settings, **groups: Any) -> Settings:
    """The test\'s settings with the test JWT secret and the rate limit out of the way."""
    tuned = dataclasses.replace(settings, **groups)
    auth = dataclasses.replace(tuned.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000)
    return dataclasses.replace(tuned, auth=auth)


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
    body: dict[str, Any] = response.json()
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
SPEND_CHECK = "/api/v1/guardrails/spending/check"
