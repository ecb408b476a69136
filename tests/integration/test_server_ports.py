"""A port the server cannot bind stops it at once: exit 2 and one line naming the variable
(a second server started with only ``PORT`` changed finds ``GRPC_PORT`` taken)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http import JWT_SECRET, ROOT
from tests.support.pg import free_port


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port held by a listening socket (as a first server's would be)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _start(tmp_path: Path, port: int, grpc_port: int) -> tuple[int, list[str], float]:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": JWT_SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRPC_PORT": str(grpc_port),
        "GRPC_ENABLED": "true",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines, time.monotonic() - started


def test_a_busy_grpc_port_is_one_line_naming_grpc_port(tmp_path: Path, taken: int) -> None:
    code, lines, seconds = _start(tmp_path, free_port(), taken)
    assert code == 2, lines
    assert seconds < 5, seconds
    assert len(lines) == 1, lines
    assert "GRPC_PORT" in lines[0], lines
    assert "GRPC_ENABLED=false" in lines[0], lines
    assert f"127.0.0.1:{taken}" in lines[0], lines
    assert "address already in use" in lines[0], lines


def test_a_busy_http_port_is_one_line_naming_port(tmp_path: Path, taken: int) -> None:
    code, lines, seconds = _start(tmp_path, taken, free_port())
    assert code == 2, lines
    assert seconds < 5, seconds
    assert len(lines) == 1, lines
    assert "set PORT" in lines[0], lines
    assert f"HTTP on 127.0.0.1:{taken}" in lines[0], lines
