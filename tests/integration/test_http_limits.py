"""Connection limits of the real server process: header deadline, keep-alive, connection cap.

Each test starts ``aiserve-gpuproxyd`` and talks raw sockets to it, since the point is what
happens to connections that never finish a request.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from infrastructure.settings import ConfigError, Settings, load_settings
from tests.support.http import env_of, server_process


class Server:
    """A running server's address, and the raw sockets a test opened to it (closed after)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sockets: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=10)
        self.sockets.append(sock)
        return sock


@contextlib.contextmanager
def _server(settings: Settings, **limits: str) -> Iterator[Server]:
    Path(settings.db.data_dir).mkdir(parents=True, exist_ok=True)
    env = {**env_of(settings), "GRPC_ENABLED": "false", **limits}
    with server_process(env, Path(settings.db.data_dir) / "server.log") as url:
        parts = urlsplit(url)
        server = Server((str(parts.hostname), int(parts.port or 0)))
        try:
            yield server
        finally:
            for sock in server.sockets:
                sock.close()


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and its content-length body) off a kept-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    start, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


@pytest.fixture(scope="module")
def deadlines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the timing tests: 1 s to send headers, 2 s of idle keep-alive."""
    data = tmp_path_factory.mktemp("limits") / "data"
    settings = load_settings({"DATA_DIR": str(data)}, env_file=None)
    with _server(settings, HTTP_HEADER_TIMEOUT_SECONDS="1", HTTP_KEEPALIVE_SECONDS="2") as server:
        yield server


def test_a_half_sent_request_is_closed_with_408_in_bounded_time(deadlines: Server) -> None:
    server = deadlines
    half = server.connect()
    half.sendall(b"GET /health HTTP/1.1\r\n")  # and nothing more
    silent = server.connect()  # sends nothing at all

    answer, waited = _read_until_closed(half)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"application/problem+json" in answer
    assert 0.5 < waited < 5
    answer, waited = _read_until_closed(silent)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert waited < 5

    # A slow but complete request inside the deadline is served as usual.
    slow = server.connect()
    for piece in (b"GET /health HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
        slow.sendall(piece)
        time.sleep(0.2)
    answer, _ = _read_until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_a_keep_alive_connection_gets_the_header_deadline_for_each_request(
    deadlines: Server,
) -> None:
    server = deadlines
    sock = server.connect()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = _read_response(sock)
    assert first.startswith(b"HTTP/1.1 200 "), first
    sock.sendall(b"GET /health HTTP/1.1\r\n")  # the second request stalls in its headers
    answer, waited = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert waited < 5


def test_a_later_request_gets_its_own_full_header_deadline(deadlines: Server) -> None:
    """The connection's one timer, armed for the first request, fires during a later
    request's header phase: it re-arms for that request's own deadline instead of closing."""
    server = deadlines
    sock = server.connect()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
    time.sleep(0.6)  # past half the 1 s deadline, within the 2 s keep-alive
    sock.sendall(b"GET /health HTTP/1.1\r\n")  # stalls: its deadline is 1 s from now
    answer, waited = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.8 < waited < 5


def test_an_idle_keep_alive_connection_is_closed(deadlines: Server) -> None:
    server = deadlines
    sock = server.connect()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
    answer, waited = _read_until_closed(sock)
    assert answer == b""
    assert waited < 5


def test_each_idle_spell_gets_the_whole_keep_alive(deadlines: Server) -> None:
    """The connection's one timer, armed when the first answer went, fires while a later
    idle spell is under way: it re-arms for that spell's own 2 s instead of closing."""
    server = deadlines
    sock = server.connect()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
    time.sleep(1.2)  # idle, within the 2 s keep-alive
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
    answer, waited = _read_until_closed(sock)
    assert answer == b""
    assert 1.5 < waited < 5


def test_connections_past_the_cap_get_503_and_are_closed(sqlite_settings: Settings) -> None:
    with _server(
        sqlite_settings, HTTP_MAX_CONNECTIONS="4", HTTP_HEADER_TIMEOUT_SECONDS="60"
    ) as server:
        held = [server.connect() for _ in range(4)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # half-sent: each keeps its slot
        time.sleep(0.3)
        extra = server.connect()
        answer, waited = _read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"too many open connections" in answer
        assert waited < 2

        # The held connections are still served, and a freed slot can be used again.
        held[0].sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(held[0])[0].startswith(b"HTTP/1.1 200 ")
        for sock in held[1:]:
            sock.close()
        time.sleep(0.3)
        host, port = server.address
        assert httpx.get(f"http://{host}:{port}/health", timeout=5).status_code == 200


def test_limits_are_settings_with_bounds() -> None:
    defaults = load_settings({}, env_file=None)
    assert (defaults.http.header_timeout, defaults.http.keepalive_seconds) == (10.0, 5)
    assert defaults.http.max_connections == 500
    for name, bad in (
        ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("HTTP_KEEPALIVE_SECONDS", "0"),
        ("HTTP_MAX_CONNECTIONS", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: bad}, env_file=None)
