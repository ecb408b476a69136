"""The fast lane answers exactly as the Litestar routes it stands in front of.

One app, each request sent twice: through the fast lane (the app's default) and with the
lane taken out of the app's handler chain (Litestar serves every route, as with
``create_app(fast_lane=False)``). Both doors give the same status, the same problem-details
bodies and the same headers (bar the date and the rate-limit counters), and count in the
metrics under the same route names.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.http.fast_lane import FastLane
from interfaces.http.front import Front
from tests.conftest import FixedClock
from tests.integration.test_proxy_http import World, make_world
from tests.support.http import JWT_SECRET, test_client

VOLATILE = {"date", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit", "content-length"}


@dataclasses.dataclass
class Doors:
    world: World

    @property
    def client(self) -> TestClient[Any]:
        return self.world.client

    def both(self, method: str, url: str, **kwargs: Any) -> tuple[Any, Any]:
        front = self.client.app.asgi_handler
        assert isinstance(front, Front)
        lane = front.lane
        assert isinstance(lane, FastLane)
        fast = self.client.request(method, url, **kwargs)
        front.lane = None  # the slow door: Litestar serves the lane's routes
        try:
            slow = self.client.request(method, url, **kwargs)
        finally:
            front.lane = lane
        return fast, slow


@pytest.fixture
def doors(settings: Settings, clock: FixedClock) -> Iterator[Doors]:
    for world in make_world(
        settings, clock, http=dataclasses.replace(settings.http, max_body_bytes=64 * 1024)
    ):
        yield Doors(world)


def same(fast: Any, slow: Any, *, body: bool = True) -> None:
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    if body:
        assert fast.content == slow.content
    strip = {k: v for k, v in fast.headers.items() if k not in VOLATILE}
    assert strip == {k: v for k, v in slow.headers.items() if k not in VOLATILE}


def api_key(doors: Doors, auth: dict[str, str]) -> dict[str, str]:
    created = doors.client.post("/api/v1/auth/apikey", json={"name": "k"}, headers=auth)
    assert created.status_code in {200, 201}, created.text
    return {"X-API-Key": created.json()["api_key"]}


def test_credits_same_through_both_doors(doors: Doors) -> None:
    alice = doors.world.alice
    key = api_key(doors, alice)
    doors.world.c.runner.catch_up()
    for headers in (alice, key, {"Authorization": f"Bearer {key['X-API-Key']}"}):
        fast, slow = doors.both("GET", "/api/v1/billing/credits", headers=headers)
        same(fast, slow)
        assert fast.status_code == 200
        assert fast.json()["credits_total"] == "100.000000"
        for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
            assert name in fast.headers
    for bad in (
        {},
        {"X-API-Key": "gpx_" + "a" * 40},
        {"X-API-Key": "nonsense"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Basic abc"},
    ):
        fast, slow = doors.both("GET", "/api/v1/billing/credits", headers=bad)
        assert fast.status_code == 401
        same(fast, slow)
    # other methods and paths are Litestar's: the fast lane does not take them
    fast, slow = doors.both("POST", "/api/v1/billing/credits", headers=key)
    same(fast, slow)
    assert fast.status_code == 405


def test_rate_limit_through_the_fast_lane(settings: Settings) -> None:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=3),
    )
    with test_client(tuned) as client:
        email, password = "rl@example.com", "correct-horse-battery"
        client.post(
            "/api/v1/auth/register", json={"email": email, "password": password, "name": "R"}
        )
        login = client.post("/api/v1/auth/login", json={"email": email, "password": password})
        auth = {"Authorization": f"Bearer {login.json()['tokens']['access_token']}"}
        answers = [client.get("/api/v1/billing/credits", headers=auth) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert int(limited.headers["retry-after"]) >= 0
    assert limited.headers["x-ratelimit-limit"] == "3"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    # the headers are there once, never twice
    assert [k for k, _ in limited.headers.multi_items() if k == "x-ratelimit-limit"] == [
        "x-ratelimit-limit"
    ]
    assert answers[0].headers["x-ratelimit-remaining"] == "2"


def test_proxy_same_through_both_doors(doors: Doors) -> None:
    world = doors.world
    own, foreign = world.alice_gpus[0]["id"], world.bob_gpu["id"]
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/api/v1/gpu/proxy/{own}/echo?x=1", {}),
        ("POST", f"/api/v1/gpu/proxy/{own}/echo", {"content": b"hello"}),
        ("HEAD", f"/api/v1/gpu/proxy/{own}/echo", {}),
        ("GET", f"/api/v1/gpu/proxy/{foreign}/echo", {}),
        ("GET", f"/api/v1/gpu/proxy/{uuid.uuid4()}/echo", {}),
        ("GET", f"/api/v1/gpu/proxy/{own}/echo", {"headers": {"X-Timelimit": "soon"}}),
        ("POST", f"/api/v1/gpu/proxy/{own}/echo", {"content": b"x" * (64 * 1024 + 1)}),
        ("GET", "/api/v1/gpu/proxy/not-a-uuid/echo", {}),
        ("GET", "/api/v1/gpu/proxy/poolside/echo", {}),
        ("TRACE", f"/api/v1/gpu/proxy/{own}/echo", {}),
    ]
    for method, url, extra in cases:
        headers = {**world.alice, **extra.pop("headers", {})}
        fast, slow = doors.both(method, url, headers=headers, **extra)
        # the echo upstream answers with what it saw, which includes nothing door-specific
        same(fast, slow, body=not url.endswith("echo?x=1"))
    status = {
        m + u: doors.client.request(m, u, headers={**world.alice, **e.pop("headers", {})}, **e)
        for m, u, e in [
            ("GET", f"/api/v1/gpu/proxy/{foreign}/echo", {}),
            ("GET", f"/api/v1/gpu/proxy/{own}/echo", {"headers": {"X-Timelimit": "soon"}}),
            ("POST", f"/api/v1/gpu/proxy/{own}/echo", {"content": b"x" * (64 * 1024 + 1)}),
            ("GET", "/api/v1/gpu/proxy/not-a-uuid/echo", {}),
        ]
    }
    assert [r.status_code for r in status.values()] == [404, 400, 413, 404]
    for answer in status.values():
        assert answer.headers["content-type"].startswith("application/problem+json")


def test_proxy_pool_and_streamed_upload_in_the_fast_lane(doors: Doors) -> None:
    world = doors.world

    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        yield b"b" * 1000

    answer = doors.client.post("/api/v1/gpu/proxy/pool/echo", content=chunks(), headers=world.alice)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gpuproxy-instance"] in {g["id"] for g in world.alice_gpus}
    too_big = doors.client.post(
        "/api/v1/gpu/proxy/pool/echo",
        content=iter([b"z" * 40_000, b"z" * 40_000]),
        headers=world.alice,
    )
    assert too_big.status_code == 413
    assert doors.client.get("/api/v1/gpu/proxy/pool").status_code == 401


def _counts(metrics: str) -> dict[tuple[str, str], float]:
    """Requests counted per (method, route) for the routes the fast lane serves."""
    counts: dict[tuple[str, str], float] = {}
    for method, route, value in re.findall(
        r'gpuproxy_http_requests_total\{method="(\w+)",route="([^"]+)",status="\d+"\} (\S+)',
        metrics,
    ):
        if "/proxy/" in route or route.endswith("/credits"):
            counts[method, route] = counts.get((method, route), 0.0) + float(value)
    return counts


def test_metrics_use_the_same_route_names(doors: Doors) -> None:
    world = doors.world
    own = world.alice_gpus[0]["id"]
    before = _counts(doors.client.get("/metrics").text)
    for url in (
        "/api/v1/billing/credits",
        f"/api/v1/gpu/proxy/{own}",
        f"/api/v1/gpu/proxy/{own}/echo",
        "/api/v1/gpu/proxy/pool",
        "/api/v1/gpu/proxy/pool/echo",
    ):
        doors.both("GET", url, headers=world.alice)
    after = _counts(doors.client.get("/metrics").text)
    # each route counted once per door, under one name whichever door served it
    added = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert added == {
        ("GET", "/api/v1/billing/credits"): 2.0,
        ("GET", "/api/v1/gpu/proxy/{instance_id}"): 2.0,
        ("GET", "/api/v1/gpu/proxy/{instance_id}/{path}"): 2.0,
        ("GET", "/api/v1/gpu/proxy/pool"): 2.0,
        ("GET", "/api/v1/gpu/proxy/pool/{path}"): 2.0,
    }


def test_cors_requests_get_cors_headers_on_the_hot_routes(settings: Settings) -> None:
    """With CORS configured, a request carrying an Origin goes through Litestar's CORS layer."""
    origin = "https://app.example.com"
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
        http=dataclasses.replace(settings.http, cors_origins=(origin,)),
    )
    with test_client(tuned) as client:
        email, password = "cors@example.com", "correct-horse-battery"
        client.post(
            "/api/v1/auth/register", json={"email": email, "password": password, "name": "C"}
        )
        login = client.post("/api/v1/auth/login", json={"email": email, "password": password})
        auth = {"Authorization": f"Bearer {login.json()['tokens']['access_token']}"}
        cross = client.get("/api/v1/billing/credits", headers={**auth, "Origin": origin})
        plain = client.get("/api/v1/billing/credits", headers=auth)
        preflight = client.options(
            "/api/v1/gpu/proxy/pool/v1/infer",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
    assert cross.status_code == 200
    assert cross.headers["access-control-allow-origin"] == origin
    assert plain.status_code == 200
    assert cross.json() == plain.json()
    assert preflight.status_code in {200, 204}
    assert preflight.headers["access-control-allow-origin"] == origin
