"""Streaming and memory checks of the proxy benchmark (``bench_proxy``).

- ``stream_app``: the upstream for them (raw ASGI under uvicorn): ``GET /big?bytes=N`` (a sized
  body of N zero bytes in 256 KiB chunks), ``POST /sink`` (reads the body, answers its length),
  ``GET /sse`` (an event stream: the first event at once, the second 50 ms later), ``GET
  /chunked`` (the same, chunked ``application/octet-stream``).
- ``big_transfers``: a 1 GiB download and a 1 GiB upload through the proxy, the server's RSS
  sampled every 20 ms (its growth over the value before is the figure).
- ``ttfb``: time to the first event of ``/sse`` and ``/chunked``, direct and through the proxy,
  on fresh connections (the same work both ways), median of many tries.
- ``memory_flat``: many proxied requests (``wrk``, in slices), the server's RSS after each.
"""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
CHUNK = b"\0" * 262_144
GIB = 1 << 30
MIB = 1 << 20


async def stream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The streaming upstream (see the module docstring)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/big":
        size = int(parse_qs(scope["query_string"].decode()).get("bytes", ["0"])[0])
        await send(_start(200, b"application/octet-stream", size))
        left = size
        while left > 0:
            piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
            left -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
        if size == 0:
            await send({"type": "http.response.body", "body": b""})
        return
    if path == "/sink":
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = f'{{"received":{total}}}'.encode()
        await send(_start(200, b"application/json", len(body)))
        await send({"type": "http.response.body", "body": body})
        return
    if path in {"/sse", "/chunked"}:
        kind = b"text/event-stream" if path == "/sse" else b"application/octet-stream"
        await send(_start(200, kind, None))
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"data: last\n\n"})
        return
    await send(_start(404, b"text/plain", 0))
    await send({"type": "http.response.body", "body": b""})


def _start(status: int, kind: bytes, length: int | None) -> dict[str, Any]:
    headers = [(b"content-type", kind)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


# ------------------------------------------------------------------------ RSS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """The peak RSS of ``pid`` while the block runs (sampled from a thread every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth_mib(self) -> float:
        return round((self.peak - self.before) / MIB, 1)


def server_pid(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:``port`` (from /proc, Linux only)."""
    hexport = f"{port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(":" + hexport) and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    import os

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"nobody listens on port {port}")


# ------------------------------------------------------------------ big transfers


async def _download(url: str, headers: dict[str, str]) -> int:
    total = 0
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"download: {resp.status} {await resp.text()}")
        async for chunk in resp.content.iter_any():
            total += len(chunk)
    return total


async def _upload(url: str, headers: dict[str, str], size: int) -> int:
    async def body() -> Any:
        left = size
        while left > 0:
            piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
            left -= len(piece)
            yield piece

    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, headers=headers, data=body()) as resp,
    ):
        text = await resp.text()
    if resp.status != 200:
        raise RuntimeError(f"upload: {resp.status} {text[:300]}")
    match = re.search(r'"received":(\d+)', text)
    return int(match.group(1)) if match else -1


def big_transfers(proxy_base: str, headers: dict[str, str], pid: int, size: int) -> dict[str, Any]:
    """``size`` bytes down and up through the proxy; the server's RSS growth for each."""
    out: dict[str, Any] = {"bytes": size}
    with RssSampler(pid) as down:
        start = time.perf_counter()
        got = asyncio.run(_download(f"{proxy_base}/big?bytes={size}", headers))
        seconds = time.perf_counter() - start
    out["download"] = {
        "received": got,
        "complete": got == size,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(down.before / MIB, 1),
        "rss_growth_mib": down.growth_mib,
    }
    with RssSampler(pid) as up:
        start = time.perf_counter()
        got = asyncio.run(_upload(f"{proxy_base}/sink", headers, size))
        seconds = time.perf_counter() - start
    out["upload"] = {
        "received": got,
        "complete": got == size,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(up.before / MIB, 1),
        "rss_growth_mib": up.growth_mib,
    }
    return out


# ------------------------------------------------------------------------- TTFB


def _first_event_ms(url: str, header: str | None) -> float:
    """Milliseconds from sending a GET (fresh connection) to reading its first event."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = f"{header}\r\n" if header else ""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Connection: close\r\n\r\n"
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(request.encode())
        seen = b""
        while b"data: first" not in seen:
            piece = sock.recv(65_536)
            if not piece:
                raise RuntimeError(f"{url}: closed before the first event: {seen[:300]!r}")
            seen += piece
        elapsed = (time.perf_counter() - start) * 1000
    if not seen.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{url}: {seen[:300]!r}")
    return elapsed


def ttfb(direct_base: str, proxy_base: str, header: str, tries: int) -> dict[str, Any]:
    """Median time to the first event, direct and proxied, for ``/sse`` and ``/chunked``."""
    out: dict[str, Any] = {}
    for path in ("/sse", "/chunked"):
        direct: list[float] = []
        proxied: list[float] = []
        for _ in range(5):  # warm-up (the proxy's pooled connection, caches)
            _first_event_ms(direct_base + path, None)
            _first_event_ms(proxy_base + path, header)
        for _ in range(tries):  # interleaved
            direct.append(_first_event_ms(direct_base + path, None))
            proxied.append(_first_event_ms(proxy_base + path, header))
        d, p = statistics.median(direct), statistics.median(proxied)
        out[path.strip("/")] = {
            "direct_ms": round(d, 3),
            "proxy_ms": round(p, 3),
            "added_ms": round(p - d, 3),
            "tries": tries,
        }
    return out


# ------------------------------------------------------------------ memory flatness


def memory_flat(url: str, header: str, pid: int, requests: int, slice_s: int) -> dict[str, Any]:
    """``requests`` proxied requests (wrk -t1 -c16 in ``slice_s`` slices), RSS after each.

    The baseline is the RSS after the first tenth of the requests (the warm-up); the figure is
    the RSS at the end over it.
    """
    done = 0
    samples: list[tuple[int, int]] = []
    errors = 0
    warm = max(1, requests // 10)
    baseline: int | None = None
    while done < requests:
        cmd = ["wrk", "-t1", "-c16", f"-d{slice_s}s", "-H", header, url]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        match = re.search(r"(\d+) requests in", text)
        done += int(match.group(1)) if match else 0
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        errors += int(bad.group(1)) if bad else 0
        rss = rss_bytes(pid)
        samples.append((done, rss))
        if baseline is None and done >= warm:
            baseline = rss
    end = samples[-1][1]
    assert baseline is not None
    return {
        "requests": done,
        "non_2xx": errors,
        "rss_after_warmup_mib": round(baseline / MIB, 1),
        "rss_end_mib": round(end / MIB, 1),
        "rss_max_after_warmup_mib": round(max(r for n, r in samples if n >= warm) / MIB, 1),
        "growth_pct": round((end - baseline) / baseline * 100, 2),
        "samples": [(n, round(r / MIB, 1)) for n, r in samples],
    }
