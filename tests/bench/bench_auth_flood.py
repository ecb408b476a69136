"""Auth flood benchmark: valid API-key requests' latency, quiet and under a flood of bad keys.

One real ``aiserve-gpuproxyd`` (SQLite, loopback only). A user's valid key is verified once;
then ``GET /api/v1/billing/credits`` with it is timed from 127.0.0.1 (one request every
``--pace`` ms), first quietly, then while a second process floods the server from 127.0.0.2
at full speed (``--connections`` at once) with wrong secrets for that key's id and for
random key ids. Reports p50/p99 of both phases, their ratio (aim: flood p99 <= 2x quiet p99)
and what the flood got (401 / 429). Bounded: ``--repeat`` rounds (at most 5) of two phases
of ``--duration`` seconds (at most 25); with several rounds the median ratio is reported.

    .venv/bin/python -m tests.bench.bench_auth_flood [--duration 8] [--connections 32] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, ROOT, server_process

CREDITS = "/api/v1/billing/credits"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(url: str, key: str, duration: float, pace: float) -> list[float]:
    """Latencies (ms) of valid requests, one every ``pace`` seconds, for ``duration`` s."""
    took: list[float] = []
    transport = httpx.HTTPTransport(local_address="127.0.0.1")
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            started = time.perf_counter()
            response = client.get(CREDITS, headers={"X-API-Key": key})
            took.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"valid request refused: {response.status_code}")
            time.sleep(max(0.0, pace - (time.perf_counter() - started)))
    return took


async def _flood(url: str, key_id: str, duration: float, connections: int) -> dict[str, int]:
    seen: Counter[str] = Counter()
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(
        base_url=url, transport=transport, limits=limits, timeout=30
    ) as client:
        end = time.monotonic() + duration

        async def worker(n: int) -> None:
            i = 0
            while time.monotonic() < end:
                i += 1
                target = key_id if i % 2 else secrets.token_hex(8)
                bad = f"gpx_{target}_{secrets.token_urlsafe(32)}"
                try:
                    response = await client.get(CREDITS, headers={"X-API-Key": bad})
                    seen[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    seen[type(exc).__name__] += 1

        await asyncio.gather(*(worker(n) for n in range(connections)))
    return dict(seen)


def _seed(env: dict[str, str]) -> str:
    c = bootstrap(load_settings(env, env_file=None))
    try:
        user = c.users.create("flooded@example.com", "correct-horse-battery", "Flooded")
        c.ledger.open_account(user.id)
        return str(c.auth.keys.create(user.id, "bench")[1])
    finally:
        c.close()


def run(duration: float, connections: int, pace: float, repeat: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "DATA_DIR": str(Path(tmp) / "data"),
            "JWT_SECRET": JWT_SECRET,
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "LOG_LEVEL": "WARNING",
        }
        key = _seed(env)
        key_id = key.split("_")[1]
        rounds = []
        with server_process(env) as url:
            _timed(url, key, 1.0, pace)  # verified once (argon2), connections warm
            for _ in range(repeat):
                rounds.append(_round(url, key, key_id, duration, connections, pace))
    return {
        "rounds": rounds,
        "p99_ratio": statistics.median(r["p99_ratio"] for r in rounds),
        "connections": connections,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }


def _round(
    url: str, key: str, key_id: str, duration: float, connections: int, pace: float
) -> dict[str, Any]:
    """One quiet phase, then one under the flood."""
    quiet = _timed(url, key, duration, pace)
    flood = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.bench.bench_auth_flood", "--flood-worker"),
            *(url, key_id, str(duration + 1), str(connections)),
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
    )
    time.sleep(1.0)  # the flood reaches full speed (and the lock-outs) first
    loud = _timed(url, key, duration, pace)
    out, _ = flood.communicate(timeout=duration + 60)
    seen = json.loads(out)
    q99, l99 = _percentile(quiet, 0.99), _percentile(loud, 0.99)
    return {
        "quiet": {"n": len(quiet), "p50_ms": statistics.median(quiet), "p99_ms": q99},
        "flood": {"n": len(loud), "p50_ms": statistics.median(loud), "p99_ms": l99},
        "p99_ratio": l99 / q99,
        "flood_responses": seen,
        "flood_rps": sum(seen.values()) / (duration + 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--flood-worker"]:
        url, key_id, duration, connections = args[1:5]
        seen = asyncio.run(_flood(url, key_id, float(duration), int(connections)))
        print(json.dumps(seen))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase (<= 25)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pace", type=float, default=5.0, help="ms between valid requests")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (<= 5)")
    ns = parser.parse_args(args)
    result = run(min(ns.duration, 25.0), ns.connections, ns.pace / 1000, min(ns.repeat, 5))
    print(json.dumps(result, indent=2))
    verdict = "met" if result["p99_ratio"] <= 2 else "missed"
    print(f"p99 under flood / quiet = {result['p99_ratio']:.2f} (aim <= 2: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
