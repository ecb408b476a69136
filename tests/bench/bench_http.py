"""HTTP benchmark: authenticated ``GET /api/v1/billing/credits`` vs a bare Litestar route.

Both run as one uvicorn process each on this machine, in the same run, loaded in turn by
``wrk`` (Debian's package) from a second process over loopback. Reports requests/s and
p50/p99 latency and the ratio (aim: authenticated >= 60 % of bare).

    .venv/bin/python -m tests.bench.bench_http [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, ROOT
from tests.support.pg import free_port

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def _serve(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
    )


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(url: str, header: str | None, seconds: int, connections: int) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if header:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    data_dir = Path(tempfile.mkdtemp(prefix="gpuproxy-bench-http-"))
    env = {
        "DATA_DIR": str(data_dir),
        "JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_MINUTE": "1000000",
    }
    c = bootstrap(load_settings(env, env_file=None))
    user = c.users.create("bench@example.com", "bench-password", "Bench")
    c.ledger.grant(user.id, 100_000_000, key="bench-grant")
    c.runner.catch_up()
    _, key = c.auth.keys.create(user.id, "bench")
    c.close()

    port_app, port_bare = free_port(), free_port()
    app = _serve(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
        {**env, "PORT": str(port_app), "HOST": "127.0.0.1"},
        data_dir / "app.log",
    )
    bare = _serve(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.bench.bare_app:app",
            "--port",
            str(port_bare),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        {},
        data_dir / "bare.log",
    )
    try:
        credits = f"http://127.0.0.1:{port_app}/api/v1/billing/credits"
        bare_url = f"http://127.0.0.1:{port_bare}/bare"
        _wait(f"http://127.0.0.1:{port_app}/health")
        _wait(bare_url)
        check = httpx.get(credits, headers={"X-API-Key": key})
        assert check.status_code == 200, check.text
        assert check.json()["credits_remaining"] == "100.00"
        wrk(bare_url, None, 2, args.connections)  # warm-up both
        wrk(credits, f"X-API-Key: {key}", 2, args.connections)
        results = {
            "bare": wrk(bare_url, None, args.duration, args.connections),
            "credits": wrk(credits, f"X-API-Key: {key}", args.duration, args.connections),
        }
    finally:
        for proc in (app, bare):
            proc.terminate()
            proc.wait(timeout=30)
    ratio = results["credits"]["rps"] / results["bare"]["rps"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"wrk -t2 -c{args.connections} -d{args.duration}s, one uvicorn process per side")
    print(f"{'route':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}")
    for name, r in (
        ("bare Litestar route", results["bare"]),
        ("GET /api/v1/billing/credits (key)", results["credits"]),
    ):
        print(
            f"{name:<34}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['errors']:>9.0f}"
        )
    print(f"ratio authenticated/bare: {ratio:.0%} (aim >= 60%)")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "http.json").write_text(json.dumps({**results, "ratio": ratio}, indent=2))
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
