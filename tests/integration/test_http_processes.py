"""Real server processes: rate limits shared through Redis, session modes, no secrets in logs."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, env_of, server_process, test_client

PASSWORD = "correct-horse-battery"


def _user_with_key(settings: Settings, email: str = "rl@example.com") -> str:
    c = bootstrap(settings)
    try:
        user = c.users.create(email, PASSWORD, "Rate Limited")
        c.ledger.open_account(user.id)
        _, key = c.auth.keys.create(user.id, "bench")
    finally:
        c.close()
    return key


@pytest.mark.slow
def test_rate_limit_is_exact_across_two_processes(pg_settings: Settings, redis_url: str) -> None:
    settings = dataclasses.replace(
        pg_settings,
        redis=dataclasses.replace(pg_settings.redis, url=redis_url),
        auth=dataclasses.replace(pg_settings.auth, rate_limit_per_minute=60, jwt_secret=JWT_SECRET),
    )
    key = _user_with_key(settings)
    env = env_of(settings)
    with server_process(env) as first, server_process(env) as second:
        answers: list[tuple[int, str]] = []  # (status, the window's X-RateLimit-Reset)
        lock = threading.Lock()

        def hammer(base: str) -> None:
            with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as client:
                for _ in range(50):
                    response = client.get("/api/v1/billing/credits")
                    with lock:
                        answers.append(
                            (response.status_code, response.headers["X-RateLimit-Reset"])
                        )

        threads = [threading.Thread(target=hammer, args=(url,)) for url in (first, second) * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Exact per one-minute window (the test may straddle a boundary): in each window
        # exactly min(limit, requests in it) got through, across both processes.
        assert {status for status, _ in answers} <= {200, 429}
        assert len(answers) == 200
        windows: dict[str, list[int]] = {}
        for status, window in answers:
            windows.setdefault(window, []).append(status)
        assert len(windows) <= 2
        for statuses in windows.values():
            assert statuses.count(200) == min(60, len(statuses)), windows
        assert max(len(v) for v in windows.values()) > 60  # the limit was really reached
        response = httpx.get(f"{first}/api/v1/billing/credits", headers={"X-API-Key": key})
        if response.status_code == 429:
            assert response.headers["X-RateLimit-Remaining"] == "0"
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"] == "Rate limit exceeded"


@pytest.mark.parametrize("mode", ["sql", "redis", "balanced"])
def test_session_modes_logout_takes_effect_at_once(
    sqlite_settings: Settings, redis_url: str, redis_client: object, mode: str
) -> None:
    settings = dataclasses.replace(
        sqlite_settings,
        auth=dataclasses.replace(sqlite_settings.auth, jwt_secret=JWT_SECRET, session_mode=mode),
        redis=dataclasses.replace(sqlite_settings.redis, url="" if mode == "sql" else redis_url),
    )
    with test_client(settings) as client:
        client.post(
            "/api/v1/auth/register",
            json={"email": "s@example.com", "password": PASSWORD, "name": "S"},
        )
        token = client.post(
            "/api/v1/auth/login", json={"email": "s@example.com", "password": PASSWORD}
        ).json()
        auth = {"Authorization": f"Bearer {token['tokens']['access_token']}"}
        assert client.get("/api/v1/billing/credits", headers=auth).status_code == 200
        keys = redis_client.keys("gpuproxy:session:*")  # type: ignore[attr-defined]
        assert (len(keys) == 1) == (mode != "sql")
        assert client.post("/api/v1/auth/logout", headers=auth).status_code == 200
        response = client.get("/api/v1/billing/credits", headers=auth)
        assert response.status_code == 401
        assert redis_client.keys("gpuproxy:session:*") == []  # type: ignore[attr-defined]


def test_balanced_mode_falls_back_to_sql_when_redis_forgets(
    sqlite_settings: Settings, redis_url: str, redis_client: object
) -> None:
    settings = dataclasses.replace(
        sqlite_settings,
        auth=dataclasses.replace(
            sqlite_settings.auth, jwt_secret=JWT_SECRET, session_mode="balanced"
        ),
        redis=dataclasses.replace(sqlite_settings.redis, url=redis_url),
    )
    with test_client(settings) as client:
        client.post(
            "/api/v1/auth/register",
            json={"email": "b@example.com", "password": PASSWORD, "name": "B"},
        )
        token = client.post(
            "/api/v1/auth/login", json={"email": "b@example.com", "password": PASSWORD}
        ).json()
        auth = {"Authorization": f"Bearer {token['tokens']['access_token']}"}
        redis_client.flushdb()  # type: ignore[attr-defined]
        assert client.get("/api/v1/billing/credits", headers=auth).status_code == 200


def test_no_secret_reaches_the_log_file(sqlite_settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(
        sqlite_settings, auth=dataclasses.replace(sqlite_settings.auth, jwt_secret=JWT_SECRET)
    )
    log_file = tmp_path / "server.log"
    env = {**env_of(settings), "LOG_LEVEL": "DEBUG"}
    with server_process(env, log_file=log_file) as base, httpx.Client(base_url=base) as client:
        client.post(
            "/api/v1/auth/register",
            json={"email": "log@example.com", "password": PASSWORD, "name": "L"},
        )
        login = client.post(
            "/api/v1/auth/login", json={"email": "log@example.com", "password": PASSWORD}
        ).json()
        token = login["tokens"]["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        key = client.post("/api/v1/auth/apikey", json={"name": "k"}, headers=auth).json()
        client.get("/api/v1/billing/credits", headers={"X-API-Key": key["api_key"]})
        client.get("/api/v1/billing/credits", headers={"X-API-Key": key["api_key"] + "x"})
        client.post(
            "/api/v1/auth/login", json={"email": "log@example.com", "password": "wrong-" + PASSWORD}
        )
        client.post("/api/v1/auth/register", content=b'{"password": "' + PASSWORD.encode())
    text = log_file.read_text()
    assert "/api/v1/billing/credits 200" in text  # the log is really written
    for secret in (PASSWORD, token, key["api_key"], JWT_SECRET, key["api_key"].split("_")[-1]):
        assert secret not in text
