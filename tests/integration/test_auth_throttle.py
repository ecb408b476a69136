"""Failed API-key attempts: limited per key id and per client address, argon2 bounded.

Semantics (``infrastructure.identity.auth_throttle``): a key this process has not verified before is
refused with 429 and ``Retry-After``, without argon2, when the client's address is over its
failure limit, or when the key id is over its limit and the address has failed before. A key
already verified keeps working, and an address with no failures still gets the owner's key
checked, so a flood of wrong secrets cannot lock the owner out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
from argon2 import PasswordHasher
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from infrastructure.identity import api_keys
from infrastructure.identity.auth import AuthenticationError
from infrastructure.identity.auth_throttle import TooManyAttemptsError
from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from interfaces.grpc.generated import gpuproxy as pb
from tests.integration.test_grpc import in_process
from tests.support.http import JWT_SECRET, env_of, server_process, test_client

PASSWORD = "correct-horse-battery"
CREDITS = "/api/v1/billing/credits"
WINDOW = 86_400  # a day: no test straddles a window's end (the counts start again there)
Client = Any


class CountingHasher(PasswordHasher):
    """The real argon2 hasher, counting the checks it runs and how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher()
    monkeypatch.setattr(api_keys, "_hasher", counting)
    return counting


def tuned(settings: Settings, **auth: Any) -> Settings:
    """``settings`` with a JWT key, a high rate limit and tight failure limits (``auth``: more
    ``AuthSettings`` changes)."""
    values = {
        "jwt_secret": JWT_SECRET,
        "rate_limit_per_minute": 100_000,
        "failures_per_key": 3,
        "failures_per_address": 1_000,
        "failure_window_seconds": WINDOW,
        **auth,
    }
    return dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, **values))


def new_key(c: Any, email: str) -> str:
    user = c.users.create(email, PASSWORD, "U")
    c.ledger.open_account(user.id)
    return str(c.auth.keys.create(user.id, "k")[1])


def wrong(key: str, n: int = 0) -> str:
    prefix, key_id, secret = key.split("_", 2)
    return f"{prefix}_{key_id}_{str(n % 10) * len(secret)}"


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with test_client(tuned(settings)) as c:
        yield c


def test_bad_secrets_for_a_key_id_get_429_with_retry_after_and_no_argon2(
    client: Client, hasher: CountingHasher
) -> None:
    key = new_key(client.app.state.container, "target@example.com")
    for n in range(3):
        assert client.get(CREDITS, headers={"X-API-Key": wrong(key, n)}).status_code == 401
    assert hasher.calls == 3
    for n in range(5):
        response = client.get(CREDITS, headers={"Authorization": f"Bearer {wrong(key, n)}"})
        assert response.status_code == 429, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(response.headers["retry-after"]) <= WINDOW
        assert "retry after" in response.json()["detail"]
    assert hasher.calls == 3  # locked out: no argon2 at all
    # The right secret, never verified by this process, waits too at an address that failed.
    assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 429
    assert hasher.calls == 3
    # An address with no failures gets one check for the locked key id, then waits as well.
    auth = client.app.state.container.auth
    with pytest.raises(AuthenticationError):
        auth.authenticate(wrong(key, 8), None, "192.0.2.7")
    with pytest.raises(TooManyAttemptsError):
        auth.authenticate(wrong(key, 9), None, "192.0.2.7")
    assert hasher.calls == 4


def test_the_owner_keeps_working_and_other_addresses_are_not_refused(
    sqlite_settings: Settings,
) -> None:
    settings = tuned(sqlite_settings, failures_per_address=20)
    c = bootstrap(settings)
    try:
        alice, bob = new_key(c, "alice@example.com"), new_key(c, "bob@example.com")
        carol = new_key(c, "carol@example.com")
    finally:
        c.close()
    env = {**env_of(settings), "AUTH_FAILURES_PER_KEY": "3", "AUTH_FAILURES_PER_ADDRESS": "20"}
    env["AUTH_FAILURE_WINDOW_SECONDS"] = str(WINDOW)
    env["RATE_LIMIT_PER_MINUTE"] = "100000"
    with server_process(env) as url:
        here = httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.1"))
        there = httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with here, there:
            assert here.get(CREDITS, headers={"X-API-Key": alice}).status_code == 200
            # Someone at another address floods Alice's and Carol's key ids, then others.
            codes = [
                there.get(CREDITS, headers={"X-API-Key": wrong(alice, n)}).status_code
                for n in range(10)
            ]
            assert codes == [401] * 3 + [429] * 7
            codes = [
                there.get(CREDITS, headers={"X-API-Key": wrong(carol, n)}).status_code
                for n in range(4)
            ]
            assert codes == [401] * 3 + [429]
            # Carol's key, never verified by the server, is checked from her clean address.
            assert here.get(CREDITS, headers={"X-API-Key": carol}).status_code == 200
            codes = [
                there.get(CREDITS, headers={"X-API-Key": f"gpx_{n:016x}_{'A' * 43}"}).status_code
                for n in range(30)
            ]
            assert codes[:14] == [401] * 14  # 6 on Alice's and Carol's ids + 14 = the 20
            assert set(codes[14:]) == {429}
            # Alice's verified key still works, from her address and from the flooding one.
            assert here.get(CREDITS, headers={"X-API-Key": alice}).status_code == 200
            assert there.get(CREDITS, headers={"X-API-Key": alice}).status_code == 200
            # Bob, at a clean address, is verified as usual; at the flooding address he waits.
            assert there.get(CREDITS, headers={"X-API-Key": bob}).status_code == 429
            assert here.get(CREDITS, headers={"X-API-Key": bob}).status_code == 200


def test_failure_counts_are_shared_by_replicas_through_redis(
    pg_settings: Settings, redis_url: str, redis_client: Any, hasher: CountingHasher
) -> None:
    settings = dataclasses.replace(
        tuned(pg_settings), redis=dataclasses.replace(pg_settings.redis, url=redis_url)
    )
    with test_client(settings) as first, test_client(settings) as second:
        key = new_key(first.app.state.container, "shared@example.com")
        for n in range(3):
            assert first.get(CREDITS, headers={"X-API-Key": wrong(key, n)}).status_code == 401
        calls = hasher.calls
        response = second.get(CREDITS, headers={"X-API-Key": wrong(key, 7)})
        assert response.status_code == 429, response.text
        assert "retry-after" in response.headers
        assert hasher.calls == calls


def test_argon2_checks_are_bounded(sqlite_settings: Settings, hasher: CountingHasher) -> None:
    with test_client(tuned(sqlite_settings, max_concurrent_hashes=1)) as client:
        c = client.app.state.container
        keys = [new_key(c, f"u{n}@example.com") for n in range(6)]
        outcomes: list[str] = []

        def attempt(n: int) -> None:
            try:
                c.auth.authenticate(wrong(keys[n]), None, f"10.0.0.{n}")
            except TooManyAttemptsError:
                outcomes.append("429")
            except Exception as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert hasher.most_at_once == 1
    # each is refused: checked (401), or 429 when no argon2 slot came free in time
    assert len(outcomes) == 6
    assert set(outcomes) <= {"AuthenticationError", "429"}
    assert "AuthenticationError" in outcomes


def test_grpc_bad_keys_get_resource_exhausted_with_retry_after(sqlite_settings: Settings) -> None:
    with in_process(tuned(sqlite_settings)) as (c, port):
        key = new_key(c, "grpc-flood@example.com")

        async def go() -> list[tuple[Status, str]]:
            seen = []
            async with Channel("127.0.0.1", port) as channel:
                for n in range(5):
                    stub = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": wrong(key, n)})
                    try:
                        await stub.get_credits(pb.GetCreditsRequest())
                        seen.append((Status.OK, ""))
                    except GRPCError as exc:
                        seen.append((exc.status, exc.message or ""))
            return seen

        seen = asyncio.run(go())
    assert [s for s, _ in seen] == [Status.UNAUTHENTICATED] * 3 + [Status.RESOURCE_EXHAUSTED] * 2
    assert "retry after" in seen[-1][1]
