"""``WORKERS=N``: several server processes on one port, supervised; refused on SQLite."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infrastructure.settings import Settings
from tests.support.http import ROOT, env_of, stop_process, wait_healthy
from tests.support.pg import free_port


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _health_pid(url: str) -> int:
    # a new connection each time, so the kernel picks a worker each time
    with httpx.Client(timeout=5) as client:
        response = client.get(f"{url}/health")
    assert response.status_code == 200
    return int(response.json()["pid"])


def _pids_answering(url: str, want: int, *, tries: int = 400) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(_health_pid(url))
        if len(seen) >= want:
            break
    return seen


@contextlib.contextmanager
def _server(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    child_env = {
        **os.environ,
        **env,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "GRPC_PORT": str(free_port()),
    }
    with log.open("wb") as console:
        proc = subprocess.Popen(
            [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
            cwd=ROOT,
            env=child_env,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=90, output=log.read_text)
        yield proc, url
    finally:
        stop_process(proc, timeout=60)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_serve_one_port_and_a_dead_one_is_replaced(
    pg_settings: Settings, tmp_path: Path
) -> None:
    env = {**env_of(pg_settings), "WORKERS": "2", "LOG_LEVEL": "INFO"}
    with _server(env, tmp_path / "server.log") as (proc, url):
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert proc.pid not in workers
        answering = set()
        deadline = time.monotonic() + 60  # the second worker may still be starting up
        while answering != workers and time.monotonic() < deadline:
            answering |= _pids_answering(url, 2, tries=50)
        assert answering == workers  # both workers answer on the one port

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        survivor = (workers - {victim}).pop()
        # service goes on while the supervisor starts a replacement
        assert _health_pid(url) == survivor
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = _children(proc.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        replaced = _children(proc.pid)
        assert victim not in replaced
        assert survivor in replaced
        assert len(replaced) == 2
        (replacement,) = replaced - {survivor}
        answering = set()
        deadline = time.monotonic() + 60
        while replacement not in answering and time.monotonic() < deadline:
            answering |= _pids_answering(url, 2, tries=50)
        assert answering == replaced

        proc.send_signal(signal.SIGTERM)  # the parent drains every worker, then exits 0
        assert proc.wait(timeout=60) == 0
        assert not any(_alive(pid) for pid in replaced)
    log = (tmp_path / "server.log").read_text()
    assert f"worker {victim} exited (signal SIGKILL)" in log


def test_workers_on_sqlite_are_refused_with_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "DB_TYPE": "sqlite",
        "WORKERS": "2",
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("aiserve-gpuproxyd: configuration error: WORKERS=2 needs")
    assert not (tmp_path / "data").exists()  # refused before anything was created
