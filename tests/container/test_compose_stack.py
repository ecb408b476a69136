"""The container image and compose stack, end to end (``make container-test``; minutes, root).

Builds the server image from the Containerfile on a Debian-built base, the stand-in images
for PostgreSQL, Redis, PgBouncer and nginx, brings compose.yaml up with podman-compose,
registers a user through nginx, rents a sandbox instance, proxies a request to it (through
nginx and through each replica: the instance lives in one of them, docs/adr/0028) and brings
the stack down. Under ``CI=true`` a missing tool is a failure, elsewhere a skip.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.container.podman_stack import (
    BASE_IMAGE,
    BASE_PACKAGES,
    SVC_BASE_IMAGE,
    SVC_PACKAGES,
    Podman,
    Stack,
    StackError,
    build_images,
    ensure_base,
    missing_tools,
    secret,
)
from tests.support.pg import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SERVICES = ("postgres", "pgbouncer", "redis", "gpuproxy-1", "gpuproxy-2", "nginx")
PASSWORD = "container-test-pass"
REPLICAS = ("gpuproxy-1", "gpuproxy-2")
INFER_BODY = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    missing = missing_tools()
    if missing or os.geteuid() != 0:
        why = f"needs root and {', '.join(missing) or 'podman'} (apt-get install podman runc "
        why += "podman-compose debootstrap)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    podman = Podman(tmp_path_factory.mktemp("container"))
    ensure_base(podman, BASE_IMAGE, BASE_PACKAGES)
    ensure_base(podman, SVC_BASE_IMAGE, SVC_PACKAGES)
    tag = f"test-{uuid.uuid4().hex[:8]}"
    images = build_images(podman, tag)
    project = f"gpxtest{uuid.uuid4().hex[:6]}"
    http_port, grpc_port = free_port(), free_port()
    subnet = f"10.{random.randint(90, 120)}.{random.randint(0, 255)}.0/24"
    stack = Stack(
        podman,
        project,
        {
            **images,
            "POSTGRES_PASSWORD": secret(),
            "REDIS_PASSWORD": secret(),
            "JWT_SECRET": secret(),
            "HTTP_PUBLISH": f"127.0.0.1:{http_port}",
            "GRPC_PUBLISH": f"127.0.0.1:{grpc_port}",
            "PUBLIC_URL": f"http://127.0.0.1:{http_port}",
            "STACK_SUBNET": subnet,
        },
    )
    # podman-compose 1.0.x ignores `ipam`: make the network it would create, with the subnet
    podman.run("podman", "network", "create", "--subnet", subnet, f"{project}_default")
    try:
        stack.compose("up", "-d")
        try:
            stack.wait_healthy(SERVICES, timeout=300)
        except StackError as exc:
            raise StackError(f"{exc}\n{stack.logs()}") from None
        yield stack, f"http://127.0.0.1:{http_port}"
    finally:
        ARTIFACTS.mkdir(exist_ok=True)  # every service's log tail, for a look afterwards
        (ARTIFACTS / "container-stack.log").write_text(stack.logs(lines=400))
        stack.compose("down", "-v", check=False)
        podman.run("podman", "network", "rm", "-f", f"{project}_default", check=False)
        podman.run("podman", "rmi", "-f", images["GPUPROXY_IMAGE"], check=False)


def test_register_rent_and_proxy_through_nginx(stack: tuple[Stack, str]) -> None:
    s, url = stack
    migrate = s.containers()["migrate"]
    assert migrate["Exited"], s.logs()
    assert migrate["ExitCode"] == 0, s.logs()
    user = s.exec("gpuproxy-1", "id", "-u").strip()
    assert user != "0", "the server runs as root"
    # Both replicas stay up: the sandbox instance lives in whichever replica rented it, the
    # replica elected for the marketplace jobs (maybe the other) moves it to running, and each
    # replica proxies to it (sandbox registry, docs/adr/0028).

    with httpx.Client(base_url=url, timeout=30) as http:
        ready = http.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["redis"] == "ok"
        email = f"ops-{uuid.uuid4().hex[:6]}@example.com"
        registered = http.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Ops"}
        )
        assert registered.status_code in {200, 201}, registered.text
        login = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["tokens"]["access_token"]
        created = http.post(
            "/api/v1/auth/apikey",
            headers={"Authorization": f"Bearer {token}"},
            json={"name": "container-test"},
        )
        assert created.status_code in {200, 201}, created.text
        auth = {"X-API-Key": created.json()["api_key"]}
        granted = s.exec(
            "gpuproxy-2", "aiserve-gpuproxy-admin", "grant-credits", email, "5.00",
            "--reason", "container test",
        )  # fmt: skip
        assert "5.000000" in granted, granted
        credits = _eventually(
            lambda: http.get("/api/v1/billing/credits", headers=auth),
            lambda r: r.status_code == 200 and r.json()["credits_remaining"] == "5.000000",
        )
        assert credits.json()["credits_remaining"] == "5.000000", credits.text

        rented = http.post(
            "/api/v1/gpu/instances/sandbox/sbx-a4000-1x-de",
            json={},
            headers={**auth, "Idempotency-Key": "container-test-rent"},
        )
        assert rented.status_code == 201, rented.text
        instance_id = rented.json()["instance"]["id"]
        infer = _eventually(
            lambda: http.post(
                f"/api/v1/gpu/proxy/{instance_id}/v2/models/demo/infer",
                headers=auth,
                json=INFER_BODY,
            ),
            timeout=90,
        )
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == [3.0, 5.0], infer.text
        for replica in REPLICAS:  # each replica, not only the one that serves the instance
            status, body = _infer_on(s, replica, instance_id, auth["X-API-Key"])
            assert status == 200, (replica, status, body)
            assert json.loads(body)["outputs"][0]["data"] == [3.0, 5.0], (replica, body)
        destroyed = http.delete(f"/api/v1/gpu/instances/sandbox/{instance_id}", headers=auth)
        assert destroyed.status_code == 200, destroyed.text
        for replica in REPLICAS:  # gone everywhere, whichever replica took the destroy
            deadline = time.monotonic() + 30
            while (answer := _infer_on(s, replica, instance_id, auth["X-API-Key"]))[0] == 200:
                assert time.monotonic() < deadline, (replica, answer)
                time.sleep(1)


# Runs inside a replica's container (python3 is there): one proxied inference on its own port.
_INFER_SCRIPT = """
import sys, urllib.error, urllib.request
request = urllib.request.Request(
    f"http://127.0.0.1:8080/api/v1/gpu/proxy/{sys.argv[1]}/v2/models/demo/infer",
    data=sys.argv[3].encode(),
    headers={"X-API-Key": sys.argv[2], "Content-Type": "application/json"},
)
try:
    with urllib.request.urlopen(request, timeout=20) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"""


def _infer_on(s: Stack, replica: str, instance_id: str, key: str) -> tuple[int, str]:
    """A proxied inference sent straight to ``replica`` (not through nginx)."""
    out = s.exec(replica, "python3", "-c", _INFER_SCRIPT, instance_id, key, json.dumps(INFER_BODY))
    status, _, body = out.strip().partition(" ")
    return int(status), body


def _eventually(
    call: Callable[[], httpx.Response],
    done: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    timeout: float = 30,
) -> httpx.Response:
    """Repeat ``call`` until ``done`` (read models and provisioning are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        response = call()
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(1)
