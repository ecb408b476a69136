"""HEAD on the fast lane's GET route (``/api/v1/billing/credits``): the GET's status and
headers, no body — through the whole app, and when a raw HEAD reaches the lane itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from infrastructure.settings import Settings
from interfaces.http.fast_lane import FastLane
from interfaces.http.observability import Observer
from tests.conftest import FixedClock
from tests.integration.test_proxy_http import World, make_world

CREDITS = "/api/v1/billing/credits"
VOLATILE = {"date", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit"}


@pytest.fixture
def world(settings: Settings, clock: FixedClock) -> Iterator[World]:
    yield from make_world(settings, clock)


def _headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in VOLATILE}


def test_head_on_credits_has_the_gets_headers_and_no_body(world: World) -> None:
    world.c.runner.catch_up()
    for auth in (world.alice, {}):  # 200, and the 401 problem answer
        got = world.client.get(CREDITS, headers=auth)
        head = world.client.head(CREDITS, headers=auth)
        assert head.status_code == got.status_code
        assert head.content == b""
        assert _headers(head) == _headers(got)
        assert int(head.headers["content-length"]) == len(got.content) > 0


def _drive(lane: FastLane, method: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    """One request straight into the lane (no wrapper in front): status, header list, body."""
    sent: list[dict[str, Any]] = []
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": CREDITS,
        "raw_path": CREDITS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def inner(*_: Any) -> None:
        raise AssertionError("the lane must answer this itself")

    lane.inner = inner
    asyncio.run(lane(scope, receive, send))  # type: ignore[arg-type]
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], (dict(start["headers"]), body)


def test_a_raw_head_reaching_the_lane_is_answered_without_body(world: World) -> None:
    world.c.runner.catch_up()
    app: Any = world.client.app
    lane = FastLane(
        None,  # type: ignore[arg-type]  # replaced in _drive
        container=world.c,
        runtime=app.state.proxy,
        observer=Observer(app.state.metrics),
        exception_handlers=app.exception_handlers,
        cors=False,
    )
    auth = [(b"authorization", world.alice["Authorization"].encode())]
    status, (headers, body) = _drive(lane, "GET", auth)
    head_status, (head_headers, head_body) = _drive(lane, "HEAD", auth)
    assert status == head_status == 200
    assert head_body == b""
    assert body
    assert head_headers[b"content-length"] == str(len(body)).encode()
    assert head_headers[b"content-type"] == headers[b"content-type"]
