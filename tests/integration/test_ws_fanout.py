"""Two server processes on one PostgreSQL and one Redis: an event committed anywhere reaches
the subscribers of both, once, within a second; a resume works on the other process."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from tests.integration.test_ws import BASE_ENV, grant, make_user, open_ws
from tests.support.http import JWT_SECRET, env_of, server_process


@contextlib.contextmanager
def two_servers(env: dict[str, str]) -> Iterator[list[str]]:
    """Two server processes, started side by side (each takes seconds to boot)."""
    managers = [server_process(env), server_process(env)]
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(managers)) as pool:
            futures = [pool.submit(m.__enter__) for m in managers]
        urls, failure = [], None
        for manager, future in zip(managers, futures, strict=True):
            try:
                urls.append(future.result())
            except Exception as exc:
                failure = exc
            else:
                stack.push(manager.__exit__)
        if failure is not None:
            raise failure
        yield urls


@pytest.mark.slow
@pytest.mark.postgres
def test_events_fan_out_across_two_processes(
    pg_settings: Settings, redis_url: str, redis_client: Any
) -> None:
    settings = dataclasses.replace(
        pg_settings,
        redis=dataclasses.replace(pg_settings.redis, url=redis_url),
        auth=dataclasses.replace(pg_settings.auth, jwt_secret=JWT_SECRET),
    )
    c = bootstrap(settings)
    try:
        alice, bob = make_user(c, "alice"), make_user(c, "bob")
        boss = make_user(c, "boss", admin=True)
        env = {**env_of(settings), **BASE_ENV}
        with two_servers(env) as (first, second):
            with (
                open_ws(second, key=alice.key) as a2,
                open_ws(first, key=alice.key) as a1,
                open_ws(second, key=bob.key) as b2,
                open_ws(first, key=boss.key) as admin1,
            ):
                for ws in (a1, a2, b2):
                    ws.subscribe(topics=["account"])
                admin1.subscribe(all=True, topics=["account"])
                # one process tails the log for both
                assert len(redis_client.keys("gpuproxy:feed:*:tailer")) == 1

                # through the REST API of the first process...
                started = time.monotonic()
                answer = httpx.post(
                    f"{first}/api/v1/admin/users/{alice.user_id}/credits",
                    json={"amount": "2.50", "reason": "fan-out"},
                    headers={"X-API-Key": boss.key, "Idempotency-Key": "fan-1"},
                    timeout=30,
                )
                assert answer.status_code == 201, answer.text
                on_second = a2.expect("event")
                latency = time.monotonic() - started
                on_first = a1.expect("event")
                # ...and straight into the ledger from a third process
                direct = grant(c, bob, 3)
                bob_event = b2.expect("event")
                seen_by_admin = [e["id"] for e in admin1.events(2)]

                assert on_second["id"] == on_first["id"]
                assert on_second["data"]["amount"] == 2_500_000
                assert on_second["account"]["credits_remaining"] == "2.500000"
                assert latency < 1.0, f"{latency:.2f}s from commit to the other process"
                assert bob_event["id"] == direct
                assert seen_by_admin == [on_first["id"], direct]
                # no duplicates, nothing of bob's for alice
                assert a1.quiet(0.5) == []
                assert a2.quiet(0.1) == []
                assert b2.quiet(0.1) == []
                last = on_second["id"]

            # alice reconnects to the other process and resumes where she was
            missed = [grant(c, alice) for _ in range(3)]
            with open_ws(first, key=alice.key) as again:
                again.send({"type": "subscribe", "topics": ["account"], "since": last})
                assert [e["id"] for e in again.events(3)] == missed
                again.expect_subscribed()
                assert again.quiet(0.3) == []
    finally:
        c.close()
