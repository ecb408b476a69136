"""A verified JWT is remembered per process (no decode, no session or user read on the next
request), and still every logout, role change and expiry reaches it at the next request, in
this process or any other (``infrastructure.identity.auth``, the revocation signal)."""

from __future__ import annotations

import dataclasses
import time

from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from tests.support.http import test_client
from tests.support.http_auth import (
    CREDITS,
    Client,
    assert_problem,
    auth_settings,
    bearer,
    login,
    make_admin,
    register,
)

STATS = "/api/v1/admin/stats"


def _remembered(client: Client, headers: dict[str, str], path: str = CREDITS) -> None:
    for _ in range(2):  # verified, then answered from what this process remembers
        assert client.get(path, headers=headers).status_code == 200


def _logout_elsewhere(settings: Settings, headers: dict[str, str]) -> None:
    other = bootstrap(settings)  # a second server process's container
    try:
        other.auth.logout(other.auth.authenticate(None, headers["Authorization"]))
    finally:
        other.close()


def test_a_logout_by_another_process_ends_a_remembered_token(settings: Settings) -> None:
    settings = auth_settings(settings)
    with test_client(settings) as client:
        register(client, "gone@example.com")
        token, kept = login(client, "gone@example.com"), login(client, "gone@example.com")
        _remembered(client, bearer(token))
        _remembered(client, bearer(kept))
        _logout_elsewhere(settings, bearer(token))
        assert_problem(client.get(CREDITS, headers=bearer(token)), 401)
        assert client.get(CREDITS, headers=bearer(kept)).status_code == 200


def test_a_role_change_by_another_process_reaches_a_remembered_token(
    settings: Settings,
) -> None:
    settings = auth_settings(settings)
    with test_client(settings) as client:
        admin = make_admin(client, "root@example.com")
        _remembered(client, admin, STATS)
        other = bootstrap(settings)
        try:
            other.users.set_admin("root@example.com", False, actor="test")
        finally:
            other.close()
        assert_problem(client.get(STATS, headers=admin), 403)


def test_a_remembered_token_stops_at_its_expiry(sqlite_settings: Settings) -> None:
    settings = auth_settings(sqlite_settings)
    settings = dataclasses.replace(
        settings, auth=dataclasses.replace(settings.auth, jwt_expiration_seconds=4)
    )
    with test_client(settings) as client:
        register(client, "brief@example.com")
        token = login(client, "brief@example.com")
        expires = time.time() + 4
        _remembered(client, bearer(token))
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        assert_problem(client.get(CREDITS, headers=bearer(token)), 401)


def _with_redis(settings: Settings, redis_url: str, mode: str) -> Settings:
    settings = auth_settings(settings)
    return dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, session_mode=mode),
        redis=dataclasses.replace(settings.redis, url=redis_url),
    )


def test_replicas_sharing_redis_honour_a_logout_at_once(
    sqlite_settings: Settings, redis_url: str, redis_client: object
) -> None:
    settings = _with_redis(sqlite_settings, redis_url, "balanced")
    with test_client(settings) as client:
        register(client, "replica@example.com")
        token = login(client, "replica@example.com")
        _remembered(client, bearer(token))
        _logout_elsewhere(settings, bearer(token))
        assert_problem(client.get(CREDITS, headers=bearer(token)), 401)


def test_sessions_lost_with_redis_end_remembered_tokens(
    sqlite_settings: Settings, redis_url: str, redis_client: object
) -> None:
    """SESSION_MODE=redis: a Redis restart without data ends every session, as it did before
    tokens were remembered (the lost signal counter restarts at a value nobody has seen)."""
    settings = _with_redis(sqlite_settings, redis_url, "redis")
    with test_client(settings) as client:
        register(client, "fragile@example.com")
        token = login(client, "fragile@example.com")
        _remembered(client, bearer(token))
        redis_client.flushdb()  # type: ignore[attr-defined]
        assert_problem(client.get(CREDITS, headers=bearer(token)), 401)
