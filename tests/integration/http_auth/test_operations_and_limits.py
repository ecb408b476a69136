"""Operations endpoints (health, readiness, metrics), the body limit (413) and throttling
(429 with its headers).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime

import pytest

from infrastructure.settings import Settings
from tests.support.http import test_client
from tests.support.http_auth import (
    CREDITS,
    PASSWORD,
    Client,
    assert_problem,
    auth_settings,
    container_of,
    user_with_token,
)


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
        auth_settings(settings, http=dataclasses.replace(settings.http, max_body_bytes=4096))
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
    tuned = auth_settings(settings)
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
