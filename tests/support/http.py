"""HTTP test helpers: an in-process Litestar test client and real server processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from interfaces.http.app import create_app
from tests.support.pg import free_port

ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "test-secret-0123456789-abcdefghijklmnop"


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process use the same databases as ``settings``."""
    env = {
        "DATA_DIR": str(settings.db.data_dir),
        "DB_TYPE": settings.db.type,
        "DB_NAME": settings.db.name,
        "JWT_SECRET": settings.auth.jwt_secret or JWT_SECRET,
    }
    if settings.db.type == "postgres":
        env.update(
            DB_HOST=settings.db.host,
            DB_PORT=str(settings.db.port),
            DB_USER=settings.db.user,
            DB_PASSWORD=settings.db.password,
        )
    if settings.redis.url:
        env.update(REDIS_URL=settings.redis.url, SESSION_MODE=settings.auth.session_mode)
    env["RATE_LIMIT_PER_MINUTE"] = str(settings.auth.rate_limit_per_minute)
    return env


@contextlib.contextmanager
def test_client(settings: Settings, **kwargs: Any) -> Iterator[TestClient[Any]]:
    """The real app in-process (Litestar's test client), with its own container."""
    container = bootstrap(settings, **kwargs)
    try:
        with TestClient(create_app(container)) as client:
            client.app.state.container = container
            yield client
    finally:
        container.close()


@contextlib.contextmanager
def server_process(env: dict[str, str], log_file: Path | None = None) -> Iterator[str]:
    """A real ``aiserve-gpuproxyd`` on a free loopback port; yields its base URL."""
    port = free_port()
    child_env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"}
    child_env.setdefault("GRPC_PORT", str(free_port()))  # never the shared default 9090
    if log_file is not None:
        child_env["LOG_FILE"] = str(log_file)
    # A pipe nobody reads would fill up and block the server: send its console to a file.
    console = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
        cwd=ROOT,
        env=child_env,
        stdout=console,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def output() -> str:
        console.seek(0)
        return console.read().decode(errors="replace")

    try:
        wait_healthy(proc, url, timeout=60, output=output)
        yield url
    finally:
        stop_process(proc)
        console.close()


def wait_healthy(
    proc: subprocess.Popen[bytes], url: str, *, timeout: float, output: Callable[[], str]
) -> None:
    """Until ``url``/health answers 200; the server's ``output()`` if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {output()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


test_client.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test
