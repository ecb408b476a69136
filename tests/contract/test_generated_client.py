"""A client generated from the live ``/schema/openapi.json`` works against a running server
(issue 22): register → login → API key → credits → rent a sandbox instance → proxy a request
→ transactions, every call through the generated code (openapi-python-client, pinned in the dev
extra), every answer parsed into the generated models.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, env_of, server_process

PACKAGE = "gpu_proxy_client"
EMAIL = "generated@example.com"
PASSWORD = "generated-pw-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    folder = tmp_path_factory.mktemp("generated")
    env = {
        "DATA_DIR": str(folder / "data"),
        "JWT_SECRET": JWT_SECRET,
        "SANDBOX_PROVISIONING_DELAY": "0.2",
        "INSTANCE_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
    }
    settings = load_settings(env, env_file=None)
    with server_process({**env_of(settings), **env}, log_file=folder / "server.log") as url:
        yield url, settings


@pytest.fixture(scope="module")
def client_package(
    server: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleType]:
    """The client, generated now from what the server serves, imported from a temp folder."""
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert generator is not None, "openapi-python-client is in the dev extra"
    folder = tmp_path_factory.mktemp("client")
    spec = folder / "openapi.json"
    spec.write_bytes(httpx.get(f"{server[0]}/schema/openapi.json", timeout=30).content)
    output = str(folder / PACKAGE)
    done = subprocess.run(
        [generator, "generate", "--path", str(spec), "--meta", "none", "--output-path", output],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


class _Api:
    """``api.auth.register`` imports ``gpu_proxy_client.api.auth.register`` on first use."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __getattr__(self, operation: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{self.tag}.{operation}")


def _api(tag: str) -> Any:
    return _Api(tag)


def _models() -> Any:
    return importlib.import_module(f"{PACKAGE}.models")


def test_the_generated_client_walks_the_api(
    server: tuple[str, Any], client_package: ModuleType
) -> None:
    url, settings = server
    models = _models()
    auth, billing, gpu, proxy = _api("auth"), _api("billing"), _api("gpu"), _api("proxy")
    admin = _api("admin")
    with contextlib.ExitStack() as stack:
        _walk(stack, url, settings, client_package, models, auth, billing, gpu, proxy, admin)


def _walk(
    stack: contextlib.ExitStack,
    url: str,
    settings: Any,
    client_package: ModuleType,
    models: Any,
    auth: Any,
    billing: Any,
    gpu: Any,
    proxy: Any,
    admin: Any,
) -> None:
    """The walk; every generated client is closed by ``stack``."""
    anonymous = stack.enter_context(
        client_package.Client(base_url=url, raise_on_unexpected_status=True)
    )

    registered = auth.register.sync(
        client=anonymous,
        body=models.RegisterBody(email=EMAIL, password=PASSWORD, name="Generated"),
    )
    assert isinstance(registered, models.Registered), registered
    assert registered.user.email == EMAIL
    wrong = auth.login.sync_detailed(
        client=anonymous, body=models.LoginBody(email=EMAIL, password="not-the-password")
    )
    assert wrong.status_code == 401
    assert isinstance(wrong.parsed, models.Problem)  # errors parse into the one problem model

    logged_in = auth.login.sync(
        client=anonymous, body=models.LoginBody(email=EMAIL, password=PASSWORD)
    )
    assert isinstance(logged_in, models.LoggedIn), logged_in
    session = stack.enter_context(
        client_package.AuthenticatedClient(
            base_url=url, token=logged_in.tokens.access_token, raise_on_unexpected_status=True
        )
    )
    made = auth.create_api_key.sync(client=session, body=models.ApiKeyBody(name="generated"))
    assert isinstance(made, models.NewApiKey), made
    keyed = stack.enter_context(
        client_package.AuthenticatedClient(
            base_url=url,
            token=made.api_key,
            prefix="",
            auth_header_name="X-API-Key",
            raise_on_unexpected_status=True,
        )
    )

    container = bootstrap(settings)  # an operator makes this user an admin (no API for it)
    try:
        container.users.set_admin(EMAIL)
    finally:
        container.close()
    granted = admin.grant.sync(
        client=session,
        user_id=registered.user.id,
        body=models.GrantBody(amount="25.00", reason="generated client test"),
    )
    assert isinstance(granted, models.Grant), granted
    credits = billing.get_credits.sync(client=keyed)
    assert isinstance(credits, models.Credits), credits
    assert credits.credits_available == "25.000000"

    rented = gpu.rent.sync(
        client=keyed, provider="sandbox", id="sbx-a4000-1x-de", body=models.RentBody()
    )
    assert isinstance(rented, models.InstanceAnswer), rented
    instance_id = rented.instance.id
    deadline = time.monotonic() + 60
    while rented.instance.state != "running":
        assert time.monotonic() < deadline, rented.instance.state
        time.sleep(0.2)
        rented = gpu.get_instance.sync(client=keyed, provider="sandbox", id=instance_id)
        assert isinstance(rented, models.InstanceAnswer), rented

    answer = proxy.proxy_envelope.sync_detailed(
        client=keyed,
        body=models.ProxyBody(
            protocol="openinference",
            instance_id=instance_id,
            model="demo",
            body={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]},
        ),
    )
    assert answer.status_code == 200, answer.content
    assert b"outputs" in answer.content

    gone = gpu.destroy.sync(client=keyed, provider="sandbox", id=instance_id)
    assert isinstance(gone, models.InstanceAnswer), gone
    page = billing.get_transactions.sync(client=keyed)
    assert isinstance(page, models.TransactionsPage), page
    movements = {(t.type_, t.amount) for t in page.transactions}  # ``type`` is renamed
    assert ("grant", "25.000000") in movements, movements
    assert any(kind == "hold" for kind, _ in movements), movements  # the rental's hold
    assert all(len(t.amount.split(".")[1]) == 6 for t in page.transactions)
