"""PostgreSQL down (a restart, a PgBouncer restart): requests get 503 with Retry-After, not 500."""

from __future__ import annotations

import dataclasses
import subprocess
import time

import pytest

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.conftest import IN_CI
from tests.support.http import JWT_SECRET, test_client
from tests.support.pg import _as_postgres, find_bin, running_cluster


@pytest.mark.slow
def test_database_down_is_503_with_retry_after() -> None:
    try:
        cluster_cm = running_cluster()
        cluster = cluster_cm.__enter__()
    except (FileNotFoundError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        cluster.create_database("down")
        loaded = load_settings(cluster.env("down"), env_file=None)
        settings = dataclasses.replace(
            loaded, auth=dataclasses.replace(loaded.auth, jwt_secret=JWT_SECRET)
        )
        c = bootstrap(settings)
        try:
            user = c.users.create("down@example.com", "correct-horse-battery", "Down")
            c.ledger.open_account(user.id)
            _, key = c.auth.keys.create(user.id, "k")
        finally:
            c.close()
        with test_client(settings) as client:
            headers = {"X-API-Key": key}
            assert client.get("/api/v1/billing/credits", headers=headers).status_code == 200
            assert client.get("/api/v1/guardrails/spending", headers=headers).status_code == 200
            pg_ctl = find_bin("pg_ctl")
            assert pg_ctl is not None
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(cluster.datadir), "-m", "fast", "-w", "stop"]),
                check=True,
                capture_output=True,
            )
            response = client.get("/api/v1/guardrails/spending", headers=headers)
            # the fast lane (raw proxy, credits) answers the same way as the Litestar routes
            lane = [
                client.get(path, headers=headers)
                for path in ("/api/v1/gpu/proxy/pool/health", "/api/v1/billing/credits")
            ]
            log = cluster.datadir.parent / "log"
            options = f"-p {cluster.port} -k {cluster.datadir.parent} -h {cluster.host}"
            subprocess.run(
                _as_postgres(
                    [
                        pg_ctl,
                        "-D",
                        str(cluster.datadir),
                        "-o",
                        options,
                        "-l",
                        str(log),
                        "-w",
                        "start",
                    ]
                ),
                check=True,
                capture_output=True,
            )
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["status"] == 503
            for answer in lane:
                assert answer.status_code == 503, answer.text
                assert int(answer.headers["Retry-After"]) >= 1
            deadline = time.monotonic() + 30  # and back to normal once it is up again
            while client.get("/api/v1/guardrails/spending", headers=headers).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        cluster_cm.__exit__(None, None, None)
