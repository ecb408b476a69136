"""A sandbox instance rented from a real server process, as a newcomer's first one is:
proxied round trips are not held back by Nagle + delayed ACK, and the instance's in-process
uvicorn server does not log lifecycle lines that read like restarts of the server."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, server_process

USD = 1_000_000


@dataclass(frozen=True)
class Rented:
    base: str
    key: str
    instance: dict[str, Any]
    log: Path


def _seed(env: dict[str, str]) -> str:
    """A user with credits and an API key, before the server starts; returns the key."""
    c = bootstrap(load_settings(env, env_file=None))
    try:
        user = c.users.create("sandbox-first@example.com", "correct-horse-battery", "First")
        c.ledger.grant(user.id, 100 * USD, key="seed")
        _, key = c.auth.keys.create(user.id, "first")
        c.runner.catch_up()
        return key
    finally:
        c.close()


def _rent_running(base: str, key: str) -> dict[str, Any]:
    headers = {"X-API-Key": key}
    offers = httpx.get(f"{base}/api/v1/gpu/instances?provider=sandbox", headers=headers).json()
    offer = min(offers["offers"], key=lambda o: float(o["price_per_hour"]))
    rented = httpx.post(
        f"{base}/api/v1/gpu/instances/sandbox/{offer['id']}", json={}, headers=headers, timeout=30
    )
    assert rented.status_code in {200, 201, 202}, rented.text
    instance: dict[str, Any] = rented.json()["instance"]
    deadline = time.monotonic() + 60
    while instance["state"] != "running":
        assert time.monotonic() < deadline, instance
        assert instance["state"] not in {"failed", "terminated"}, instance
        time.sleep(0.1)
        got = httpx.get(
            f"{base}/api/v1/gpu/instances/sandbox/{instance['id']}", headers=headers, timeout=30
        )
        instance = got.json()["instance"]
    return instance


@pytest.fixture(scope="module")
def rented(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rented]:
    tmp = tmp_path_factory.mktemp("sandbox-server")
    env = {
        "DATA_DIR": str(tmp),
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_PER_MINUTE": "100000",
        "SANDBOX_PROVIDER_ENABLED": "true",
        "SANDBOX_PROVISIONING_DELAY": "0",
        "INSTANCE_POLL_SECONDS": "0.2",
        "GRPC_ENABLED": "false",
    }
    key = _seed(env)
    log = tmp / "server.log"
    with server_process(env, log) as base:
        yield Rented(base, key, _rent_running(base, key), log)


def test_proxied_sandbox_round_trips_are_not_delayed_by_nagle(rented: Rented) -> None:
    # Without TCP_NODELAY on the sandbox's accepted sockets every answer waits ~40 ms for the
    # proxy's delayed ACK; with it a round trip is about a millisecond, even on a busy box.
    url = f"{rented.base}/api/v1/gpu/proxy/{rented.instance['id']}/health"
    with httpx.Client(headers={"X-API-Key": rented.key}, timeout=10) as http:
        assert http.get(url).status_code == 200  # warm: connections, caches
        times = []
        for _ in range(20):
            started = time.perf_counter()
            answer = http.get(url)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    assert statistics.median(times) < 0.010, [round(t * 1000, 2) for t in times]


def test_a_sandbox_instance_does_not_log_a_server_start(rented: Rented) -> None:
    text = rented.log.read_text()
    assert text.count("Started server process") == 1, text
    assert "Shutting down" not in text, text
    assert (
        f"sandbox instance {rented.instance['provider_instance_id']} serving on 127.0.0.1:" in text
    ), text
