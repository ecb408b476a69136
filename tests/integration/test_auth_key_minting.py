"""Who may create API keys, and for how long: only a login session, never beyond it.

An API key cannot mint keys (403 on REST, PERMISSION_DENIED on gRPC). A key made with a
session's JWT expires with that session at the latest and is revoked at its logout, unless the
user re-enters the password in the same request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from infrastructure.settings import Settings
from interfaces.grpc.generated import gpuproxy as pb
from tests.integration.test_grpc import in_process
from tests.support.http import JWT_SECRET, test_client

PASSWORD = "correct-horse-battery"
CREDITS = "/api/v1/billing/credits"
KEYS = "/api/v1/auth/apikey"
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


def session(client: Client, email: str) -> tuple[dict[str, str], int]:
    """A new user's login token (as headers) and its expiry."""
    body = {"email": email, "password": PASSWORD, "name": "U"}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    login = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    token = login.json()["tokens"]["access_token"]
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    return {"Authorization": f"Bearer {token}"}, int(expires)


def epoch(iso: str | None) -> int | None:
    return None if iso is None else int(datetime.fromisoformat(iso).timestamp())


def iso(moment: int) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def test_an_api_key_cannot_create_api_keys(client: Client) -> None:
    auth, _ = session(client, "minter@example.com")
    parent = client.post(KEYS, headers=auth, json={"name": "parent"}).json()["api_key"]
    for headers in ({"X-API-Key": parent}, {"Authorization": f"Bearer {parent}"}):
        response = client.post(KEYS, headers=headers, json={"name": "child"})
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "API keys cannot create API keys" in response.json()["detail"]
    listed = client.get("/api/v1/auth/apikeys", headers=auth).json()["api_keys"]
    assert [k["name"] for k in listed] == ["parent"]


def test_a_key_never_outlives_the_session_that_made_it(client: Client) -> None:
    auth, session_ends = session(client, "capped@example.com")
    forever = client.post(KEYS, headers=auth, json={"name": "forever"}).json()
    assert epoch(forever["expires_at"]) == session_ends
    later = client.post(
        KEYS, headers=auth, json={"name": "later", "expires_at": iso(session_ends + 86_400)}
    ).json()
    assert epoch(later["expires_at"]) == session_ends
    sooner_at = int(time.time()) + 600
    sooner = client.post(KEYS, headers=auth, json={"name": "sooner", "expires_at": iso(sooner_at)})
    assert epoch(sooner.json()["expires_at"]) == sooner_at  # an earlier expiry is kept
    listed = {
        k["name"]: k for k in client.get("/api/v1/auth/apikeys", headers=auth).json()["api_keys"]
    }
    assert epoch(listed["forever"]["expires_at"]) == session_ends


def test_logout_revokes_the_keys_the_session_made_without_the_password(client: Client) -> None:
    auth, _ = session(client, "logout@example.com")
    bound = client.post(KEYS, headers=auth, json={"name": "bound"}).json()["api_key"]
    confirmed = client.post(KEYS, headers=auth, json={"name": "kept", "password": PASSWORD})
    assert confirmed.status_code == 201, confirmed.text
    assert confirmed.json()["expires_at"] is None  # re-authenticated: no expiry is allowed
    kept = confirmed.json()["api_key"]
    for key in (bound, kept):  # both used (and so verified and cached) first
        assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=auth).status_code == 200
    assert client.get(CREDITS, headers={"X-API-Key": bound}).status_code == 401
    assert client.get(CREDITS, headers={"X-API-Key": kept}).status_code == 200


def test_a_wrong_password_makes_no_key(client: Client) -> None:
    auth, _ = session(client, "wrongpw@example.com")
    response = client.post(KEYS, headers=auth, json={"name": "k", "password": "not-my-password"})
    assert response.status_code == 403, response.text
    assert response.json()["field"] == "password"
    assert client.get("/api/v1/auth/apikeys", headers=auth).json()["api_keys"] == []


def test_grpc_create_api_key_follows_the_same_rules(sqlite_settings: Settings) -> None:
    settings = dataclasses.replace(
        sqlite_settings, auth=dataclasses.replace(sqlite_settings.auth, jwt_secret=JWT_SECRET)
    )
    with in_process(settings) as (c, port):
        user = c.users.create("grpc-minter@example.com", PASSWORD, "G")
        c.ledger.open_account(user.id)

        async def go() -> tuple[Any, Status | None]:
            async with Channel("127.0.0.1", port) as channel:
                stub = pb.GpuProxyServiceStub(channel)
                login = await stub.login(
                    pb.LoginRequest(email="grpc-minter@example.com", password=PASSWORD)
                )
                made = await stub.create_api_key(
                    pb.CreateApiKeyRequest(name="from-jwt", token=login.token)
                )
                with_key = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": made.api_key})
                try:
                    await with_key.create_api_key(pb.CreateApiKeyRequest(name="child"))
                except GRPCError as exc:
                    return (login, made), exc.status
                return (login, made), None

        (login, made), refused = asyncio.run(go())
    assert made.expires_at == login.expires_at  # capped at the session's expiry
    assert refused == Status.PERMISSION_DENIED
