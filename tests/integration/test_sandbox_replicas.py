"""The sandbox market across replicas on one PostgreSQL (docs/adr/0028).

Each replica has its own ``SandboxProvider``; an instance is served by the replica that rented
it and every other replica answers for it from the shared ``sandbox_instances`` rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from domain.marketplace import RentRequest
from domain.services.marketplace import RentSpec
from infrastructure.providers.sandbox import SandboxProvider
from infrastructure.providers.sandbox_registry import SandboxRegistry
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.support.http import JWT_SECRET, ROOT, env_of, stop_process, test_client, wait_healthy
from tests.support.pg import free_port

USD = 1_000_000
OFFER = "sbx-a4000-1x-de"  # the cheapest sandbox offer
TIMEOUT = 2.0  # seconds without a heartbeat after which an owner's instances are gone


def _settings(pg_settings: Settings) -> Settings:
    return dataclasses.replace(
        pg_settings,
        auth=dataclasses.replace(pg_settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(
            pg_settings.providers,
            sandbox_enabled=True,
            sandbox_provisioning_delay=0.0,
            sandbox_heartbeat_timeout=TIMEOUT,
        ),
    )


def _sandbox(c: Container) -> SandboxProvider:
    provider = c.marketplace.provider("sandbox")
    assert isinstance(provider, SandboxProvider)
    return provider


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return True
    return False


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_another_replica_answers_for_and_destroys_an_instance(pg_settings: Settings) -> None:
    settings = _settings(pg_settings)
    a, b = bootstrap(settings), bootstrap(settings)
    loop = asyncio.new_event_loop()
    try:
        user = a.users.create("ann@example.com", "correct-horse-battery", "Ann")
        a.ledger.grant(user.id, 10 * USD, key="seed")
        gpu = loop.run_until_complete(a.marketplace.rent(user.id, "sandbox", OFFER, RentSpec()))
        assert gpu.state == "running", gpu.state
        pid = gpu.provider_instance_id
        assert pid is not None
        pa, pb = _sandbox(a), _sandbox(b)
        assert pa.registry is not None
        assert pb.registry is not None
        assert pa.registry.owner != pb.registry.owner

        seen = loop.run_until_complete(pb.status(pid))
        assert (seen.status, seen.host, seen.port) == ("running", "127.0.0.1", gpu.port)
        assert pb.endpoint(pid) == pa.endpoint(pid) == ("127.0.0.1", gpu.port)
        assert pid in {i.instance_id for i in loop.run_until_complete(pb.list_instances())}
        health = httpx.get(f"http://127.0.0.1:{gpu.port}/health", timeout=5)
        assert health.headers["x-sandbox-instance-id"] == pid

        # B leads the marketplace jobs: a round and a reconciliation leave A's instance alone
        jobs = b.jobs()
        jobs.reconcile_grace = 0.0
        assert loop.run_until_complete(jobs.run_once())
        counts = loop.run_until_complete(jobs.reconcile())
        assert counts == {"orphans": 0, "vanished": 0}
        assert b.marketplace.get(gpu.id).state == "running"

        # a destroy through B: terminated at once everywhere, A's server stops within a beat
        done = loop.run_until_complete(b.marketplace.destroy(gpu.id, actor=str(user.id)))
        assert done.state == "terminated", done.state
        assert loop.run_until_complete(pb.status(pid)).status == "terminated"
        assert pb.endpoint(pid) is None
        _until(lambda: _refused("127.0.0.1", gpu.port or 0), 3 * TIMEOUT, "A still serves")
        assert loop.run_until_complete(pa.status(pid)).status == "terminated"
        assert pid not in {i.instance_id for i in loop.run_until_complete(pa.list_instances())}
    finally:
        for c in (a, b):
            loop.run_until_complete(c.aclose_providers())
            c.close()
        loop.close()


@pytest.mark.slow
def test_the_elected_replica_moves_another_replica_s_rental_to_running(
    pg_settings: Settings,
) -> None:
    settings = _settings(pg_settings)
    settings = dataclasses.replace(
        settings,
        providers=dataclasses.replace(settings.providers, sandbox_provisioning_delay=0.5),
    )
    a, b = bootstrap(settings), bootstrap(settings)
    loop = asyncio.new_event_loop()
    try:
        user = a.users.create("cy@example.com", "correct-horse-battery", "Cy")
        a.ledger.grant(user.id, 10 * USD, key="seed")
        gpu = loop.run_until_complete(a.marketplace.rent(user.id, "sandbox", OFFER, RentSpec()))
        assert gpu.state == "provisioning", gpu.state
        jobs = b.jobs()  # A runs no jobs: B refreshes the rental from A's published row
        deadline = time.monotonic() + 10
        while (state := b.marketplace.get(gpu.id).state) != "running":
            assert state == "provisioning", state
            assert time.monotonic() < deadline, "B never saw A's instance running"
            b.runner.catch_up()  # the instances read model the jobs pick work from
            assert loop.run_until_complete(jobs.run_once())
            time.sleep(0.1)
        running = b.marketplace.get(gpu.id)
        assert running.provider_instance_id is not None
        assert _sandbox(a).endpoint(running.provider_instance_id) == ("127.0.0.1", running.port)
        answer = httpx.get(f"http://127.0.0.1:{running.port}/v2/health/ready", timeout=5)
        assert answer.status_code == 200, answer.text
    finally:
        for c in (a, b):
            loop.run_until_complete(c.aclose_providers())
            c.close()
        loop.close()


@pytest.mark.slow
def test_replica_b_proxies_to_an_instance_replica_a_serves(pg_settings: Settings) -> None:
    """The proxy of an app that never rented the instance forwards to it (its owner's port)."""
    settings = _settings(pg_settings)
    a = bootstrap(settings)
    loop = asyncio.new_event_loop()
    try:
        user = a.users.create("di@example.com", "correct-horse-battery", "Di")
        a.ledger.grant(user.id, 10 * USD, key="seed")
        _, key = a.auth.keys.create(user.id, "b")
        gpu = loop.run_until_complete(a.marketplace.rent(user.id, "sandbox", OFFER, RentSpec()))
        assert gpu.state == "running", gpu.state
        with test_client(settings) as b:
            answer = b.get(f"/api/v1/gpu/proxy/{gpu.id}/health", headers={"X-API-Key": key})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-sandbox-instance-id"] == gpu.provider_instance_id
            pb = b.app.state.container.marketplace.provider("sandbox")
            assert gpu.provider_instance_id not in pb._instances  # B serves no instance itself
    finally:
        loop.run_until_complete(a.aclose_providers())
        a.close()
        loop.close()


@pytest.mark.slow
def test_a_destroy_asked_elsewhere_is_carried_out_when_the_owner_is_asked(
    pg_settings: Settings,
) -> None:
    """The owner's own status() sees the request at once, without waiting for a beat."""
    settings = _settings(
        dataclasses.replace(
            pg_settings,
            providers=dataclasses.replace(pg_settings.providers, sandbox_heartbeat_timeout=300.0),
        )
    )
    a, b = bootstrap(settings), bootstrap(settings)
    loop = asyncio.new_event_loop()
    try:
        pa, pb = _sandbox(a), _sandbox(b)
        made = loop.run_until_complete(pa.rent(OFFER, RentRequest(label="x")))
        loop.run_until_complete(pb.destroy(made.instance_id))
        assert loop.run_until_complete(pb.status(made.instance_id)).status == "terminated"
        assert loop.run_until_complete(pa.status(made.instance_id)).status == "terminated"
        assert _refused("127.0.0.1", made.port or 0)
    finally:
        for c in (a, b):
            loop.run_until_complete(c.aclose_providers())
            c.close()
        loop.close()


@contextlib.contextmanager
def _owner_process(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real server process (the instances' owner); yields it and its base URL."""
    port = free_port()
    child_env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"}
    console = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
        cwd=ROOT,
        env=child_env,
        stdout=console,
        stderr=subprocess.STDOUT,
    )

    def output() -> str:
        console.seek(0)
        return console.read().decode(errors="replace")

    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=60, output=output)
        yield proc, url
    finally:
        if proc.poll() is None:
            stop_process(proc)
        console.close()


@pytest.mark.slow
def test_a_killed_owner_s_instance_reads_terminated_and_metering_stops(
    pg_settings: Settings,
) -> None:
    settings = _settings(pg_settings)
    b = bootstrap(settings)  # the surviving replica, elected for the marketplace jobs
    loop = asyncio.new_event_loop()
    try:
        jobs = b.jobs()
        jobs.reconcile_grace = 0.0
        assert jobs.election.leading()  # before the owner starts: it never leads
        user = b.users.create("bob@example.com", "correct-horse-battery", "Bob")
        b.ledger.grant(user.id, 10 * USD, key="seed")
        _, key = b.auth.keys.create(user.id, "owner")
        env = {
            **env_of(settings),
            "SANDBOX_PROVISIONING_DELAY": "0",
            "SANDBOX_HEARTBEAT_TIMEOUT_SECONDS": str(TIMEOUT),
            "GRPC_ENABLED": "false",
            "RATE_LIMIT_PER_MINUTE": "100000",
        }
        with _owner_process(env) as (proc, base):
            rented = httpx.post(
                f"{base}/api/v1/gpu/instances/sandbox/{OFFER}",
                json={},
                headers={"X-API-Key": key},
                timeout=30,
            )
            assert rented.status_code == 201, rented.text
            body: dict[str, Any] = rented.json()["instance"]
            gpu_id = uuid.UUID(body["id"])
            gpu = b.marketplace.get(gpu_id)
            assert gpu.state == "running", gpu.state
            pid = gpu.provider_instance_id
            assert pid is not None
            pb = _sandbox(b)
            assert loop.run_until_complete(pb.status(pid)).status == "running"
            time.sleep(0.3)
            loop.run_until_complete(jobs.meter_all())
            assert b.marketplace.get(gpu_id).state == "running"
            loop.run_until_complete(jobs.reconcile())
            assert b.marketplace.get(gpu_id).state == "running"  # alive: not vanished

            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            killed = time.monotonic()
            _until(
                lambda: loop.run_until_complete(pb.status(pid)).status == "terminated",
                3 * TIMEOUT,
                "the dead owner's instance still reads as alive",
            )
            assert time.monotonic() - killed >= TIMEOUT * 0.5  # not before the heartbeat aged
            assert pid not in {i.instance_id for i in loop.run_until_complete(pb.list_instances())}

        b.runner.catch_up()  # the owner process's projection runner died with it
        counts = loop.run_until_complete(jobs.reconcile())
        assert counts["vanished"] == 1, counts
        closed = b.marketplace.get(gpu_id)
        assert closed.state not in {"running", "provisioning", "stopping"}, closed.state
        before = b.ledger.account(user.id)
        time.sleep(0.3)
        loop.run_until_complete(jobs.meter_all())
        assert b.marketplace.get(gpu_id).state == closed.state
        after = b.ledger.account(user.id)
        assert (after.available, after.held) == (before.available, before.held)
        assert after.held == 0  # the rental's hold is released: nothing is billed any more
    finally:
        loop.run_until_complete(b.aclose_providers())
        b.close()
        loop.close()


def test_rows_of_a_silent_owner_read_as_gone(pg_settings: Settings) -> None:
    """Staleness is judged by the database's clock against the reader's timeout."""
    b = bootstrap(pg_settings)
    try:
        owner = SandboxRegistry(b.db, timeout=0.5, owner="dead-owner")
        owner.add(
            instance_id="sbx-stale",
            label="l",
            offer_id=OFFER,
            price_per_hour=170_000,
            host="10.0.0.9",
            port=4321,
            state="running",
            raw_state="running",
            started_at=1.0,
        )
        reader = SandboxRegistry(b.db, timeout=0.5)
        fresh = reader.get("sbx-stale")
        assert fresh is not None
        assert not fresh.gone
        assert [r.instance_id for r in reader.live()] == ["sbx-stale"]
        time.sleep(0.8)
        stale = reader.get("sbx-stale")
        assert stale is not None
        assert stale.stale
        assert stale.gone
        assert reader.live() == []
        assert owner.beat() == []  # the owner beats again: alive again
        assert [r.instance_id for r in reader.live()] == ["sbx-stale"]
        assert reader.request_destroy("sbx-stale")
        assert reader.live() == []
        assert owner.beat() == ["sbx-stale"]
        owner.mark_terminated("sbx-stale")
        assert not reader.request_destroy("sbx-stale")
    finally:
        b.close()
