"""FORWARDED_ALLOW_IPS on a real server: the per-address failed-key limit sees the real client.

The server runs as ``aiserve-gpuproxyd`` (uvicorn included, whose own proxy-header handling
must not undo the setting) and the tests connect from 127.0.0.1. With
``AUTH_FAILURES_PER_ADDRESS=3`` the fourth wrong API key from one address is refused with 429
before it is checked; each attempt uses a new key id, so only the address limit can trip.
Both doors count: the fast lane (``GET /api/v1/billing/credits``) and a Litestar route
(``GET /api/v1/auth/apikeys``).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infrastructure.settings import load_settings
from tests.support.http import env_of, server_process

FAST_LANE = "/api/v1/billing/credits"
LITESTAR = "/api/v1/auth/apikeys"
LIMIT = 3
_ids = itertools.count()


def _wrong_key() -> str:
    return f"gpx_{next(_ids):016x}_{secrets.token_urlsafe(32)[:43]}"


def _attempt(url: str, path: str, **headers: str) -> int:
    response = httpx.get(f"{url}{path}", headers={"X-API-Key": _wrong_key(), **headers})
    assert response.status_code in {401, 429}, response.text
    return response.status_code


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "AUTH_FAILURES_PER_ADDRESS": str(LIMIT),
        "AUTH_FAILURES_PER_KEY": "1000",
    }
    if request.param is not None:  # None: unset, the default (uvicorn alone trusts 127.0.0.1)
        env["FORWARDED_ALLOW_IPS"] = request.param
    settings = load_settings(env, env_file=None)
    with server_process({**env_of(settings), **env}) as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("server", [None, "", "10.9.9.9"], indirect=True)
def test_an_untrusted_peer_cannot_spoof_its_address(server: str) -> None:
    # each attempt claims a new address: believed, none would reach the limit
    statuses = [
        _attempt(server, door, **{"X-Forwarded-For": f"198.51.100.{i}"})
        for i, door in enumerate([FAST_LANE, LITESTAR, FAST_LANE, LITESTAR, FAST_LANE])
    ]
    assert statuses == [401, 401, 401, 429, 429]
    assert _attempt(server, LITESTAR, Forwarded="for=198.51.100.99") == 429


@pytest.mark.slow
@pytest.mark.parametrize("server", ["127.0.0.0/8"], indirect=True)
def test_behind_a_trusted_proxy_the_real_client_is_limited(server: str) -> None:
    real = "203.0.113.5"
    # the client's own X-Forwarded-For entry comes first; the proxy appends the real address
    spoofed = {"X-Forwarded-For": f"1.1.1.1, {real}"}
    doors = [FAST_LANE, LITESTAR, FAST_LANE]
    assert [_attempt(server, door, **spoofed) for door in doors] == [401, 401, 401]
    # the same client is over its limit on both doors, whichever header names it
    assert _attempt(server, FAST_LANE, **{"X-Forwarded-For": real}) == 429
    assert _attempt(server, LITESTAR, **{"X-Forwarded-For": f"9.9.9.9,{real}"}) == 429
    assert _attempt(server, LITESTAR, Forwarded=f'for="{real}:5555"') == 429
    # another client behind the same proxy, and the proxy's own address, are not
    assert _attempt(server, FAST_LANE, **{"X-Forwarded-For": "203.0.113.6"}) == 401
    assert _attempt(server, LITESTAR, **{"X-Forwarded-For": "203.0.113.6"}) == 401
    assert _attempt(server, LITESTAR) == 401
