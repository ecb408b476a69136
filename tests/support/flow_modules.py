"""Which of the project's modules three flows pass through, counted by tracing a real run.

``python -m tests.support.flow_modules`` runs, in process on SQLite with the sandbox market:
a proxied request that pays a per-request fee (steady state: the lease is already taken and
the caller's token was seen since the last credential change), an admin grant with an
``Idempotency-Key``, and the projection update that follows it. All set-up comes before the
warm-up requests, so nothing between a warm-up and its traced run changes what is cached.

Tasks on timers (the event feed's poll, the usage flush, the WebSocket hub) fall into a window
now and then, so one run's count moved between 16 and 30 for the same code. Each flow therefore
runs ``REPEATS`` times, each in its own window opened after ``SETTLE`` seconds of quiet, and a
module counts if its code ran in every window: the flow's own modules run every time. For each
flow it prints those project modules (tests and third-party code excluded), so
``docs/architecture.md`` can show the flows and how many modules each touches.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from litestar.testing import TestClient

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from interfaces.http.app import create_app

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("domain", "projections", "interfaces", "infrastructure")
PASSWORD = "correct-horse-battery"
JWT_SECRET = "flow-modules-" + "x" * 40
SETTLE = 0.5  # seconds for the background work of the previous step to finish
REPEATS = 3  # windows per flow; a module counts if it ran in every one


def _module(filename: str) -> str | None:
    path = Path(filename)
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    if not rel.parts or rel.parts[0] not in PACKAGES or rel.suffix != ".py":
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class Tracer:
    """A profile hook installed before anything starts, so every thread the app makes has it.

    Python 3.11 cannot add a hook to threads already running, hence ``install`` first; the
    hook records only between ``start`` and ``stop``.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.recording = False
        self._files: dict[str, str | None] = {}

    def _hook(self, frame: FrameType, event: str, _arg: Any) -> None:
        if not self.recording or event != "call":
            return
        name = frame.f_code.co_filename
        if name not in self._files:
            self._files[name] = _module(name)
        module = self._files[name]
        if module is not None:
            self.seen.add(module)

    def install(self) -> None:
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)

    def uninstall(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)

    def trace(self, action: Callable[[], Any]) -> set[str]:
        """The modules that ran, in any thread, while ``action`` ran (the window opens once
        what earlier steps set off in the background had ``SETTLE`` seconds to finish)."""
        time.sleep(SETTLE)
        self.seen = set()
        self.recording = True
        try:
            action()
        finally:
            self.recording = False
        return set(self.seen)


def _login(client: TestClient[Any], email: str) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "U"})
    token = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


def flows() -> dict[str, set[str]]:
    """Runs the three flows and returns the modules each passed through."""
    tracer = Tracer()
    tracer.install()
    try:
        return _flows(tracer)
    finally:
        tracer.uninstall()


def _flows(tracer: Tracer) -> dict[str, set[str]]:
    with tempfile.TemporaryDirectory() as data:
        settings = load_settings(
            {
                "DATA_DIR": data,
                "JWT_SECRET": JWT_SECRET,
                "SANDBOX_PROVIDER_ENABLED": "true",
                "SANDBOX_PROVISIONING_DELAY": "0",
                "PROXY_REQUEST_PRICE": "0.0001",
            },
            env_file=None,
        )
        c = bootstrap(settings)
        try:
            with TestClient(create_app(c)) as client:
                return _run(client, c, tracer)
        finally:
            c.close()


def _run(client: TestClient[Any], c: Any, tracer: Tracer) -> dict[str, set[str]]:
    alice = _login(client, "alice@example.com")
    alice_id = c.users.by_email("alice@example.com").id
    _login(client, "root@example.com")
    c.users.set_admin("root@example.com")  # a role change: every process re-checks its
    admin = _login(client, "root@example.com")  # credentials, so it comes before the warm-ups
    c.ledger.grant(alice_id, 10_000_000, key="seed")
    offers = client.get("/api/v1/gpu/instances?provider=sandbox", headers=alice).json()["offers"]
    client.post(f"/api/v1/gpu/instances/sandbox/{offers[0]['id']}", json={}, headers=alice)
    c.runner.catch_up()
    asyncio.run(c.jobs().run_once())
    c.runner.catch_up()
    proxied = "/api/v1/gpu/proxy/pool/health"
    _expect(client.get(proxied, headers=alice).status_code, 200, "warm-up proxied request")
    grant_path = f"/api/v1/admin/users/{alice_id}/credits"
    grant_body = {"amount": "1.00"}
    warm = {**admin, "Idempotency-Key": "flow-warm"}
    _expect(client.post(grant_path, headers=warm, json=grant_body).status_code, 201, "warm grant")
    c.runner.catch_up()

    runs: dict[str, list[set[str]]] = {}
    for n in range(REPEATS):
        runs.setdefault("proxied request with a fee", []).append(
            tracer.trace(
                lambda: _expect(
                    client.get(proxied, headers=alice).status_code, 200, "proxied request"
                ),
            )
        )
        keyed = {**admin, "Idempotency-Key": f"flow-grant-{n}"}
        runs.setdefault("admin grant", []).append(
            tracer.trace(
                lambda keyed=keyed: _expect(  # type: ignore[misc]
                    client.post(grant_path, headers=keyed, json=grant_body).status_code,
                    201,
                    "grant",
                ),
            )
        )
        runs.setdefault("projection update", []).append(tracer.trace(c.runner.catch_up))
    return {name: set.intersection(*windows) for name, windows in runs.items()}


def _expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"{what}: HTTP {got}, expected {want}")


def main() -> None:
    for name, modules in flows().items():
        print(f"{name}: {len(modules)} modules")
        for module in sorted(modules):
            print(f"  {module}")


if __name__ == "__main__":
    main()
