"""HTTP benchmark: authenticated ``GET /api/v1/billing/credits`` vs a bare Litestar route.

Both run as one uvicorn process each on this machine, in the same run, loaded in turn by
``wrk`` (Debian's package) from a second process over loopback. Reports requests/s and
p50/p99 latency and the ratio (aim: authenticated >= 60 % of bare); with ``--repeat N`` the
two are measured N times (the order alternating) and the medians are reported.

Before each repeat it waits until the 1-minute load average is below 1.0, at most 15
minutes in all (``--quiet-load``, ``--max-wait``, ``$BENCH_WAIT_UNTIL``; ``--no-wait`` never
waits), and records the load average either way. JSON: ``bench-results/http.json``.

    .venv/bin/python -m tests.bench.bench_http [--duration 10] [--connections 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.bench.harness import Quiet, loadavg, machine_facts
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="measure both N times; medians")
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=900.0, help="seconds, all repeats")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "http.json")
    return parser.parse_args(argv)


def _median(runs: list[dict[str, Any]], side: str) -> dict[str, float]:
    return {
        key: round(statistics.median(r[side][key] for r in runs), 2)
        for key in ("rps", "p50_ms", "p99_ms", "errors")
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    quiet = Quiet.for_run(enabled=not args.no_wait, below=args.quiet_load, max_wait=args.max_wait)
    when = datetime.now(UTC).isoformat(timespec="seconds")
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
        {**env, "PORT": str(port_app), "HOST": "127.0.0.1", "GRPC_ENABLED": "false"},
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
    runs: list[dict[str, Any]] = []
    try:
        credits = f"http://127.0.0.1:{port_app}/api/v1/billing/credits"
        bare_url = f"http://127.0.0.1:{port_bare}/bare"
        _wait(f"http://127.0.0.1:{port_app}/health")
        _wait(bare_url)
        check = httpx.get(credits, headers={"X-API-Key": key})
        assert check.status_code == 200, check.text
        assert Decimal(check.json()["credits_remaining"]) == 100  # "100.000000" (µUSD digits)
        sides = {"bare": (bare_url, None), "credits": (credits, f"X-API-Key: {key}")}
        for index in range(args.repeat):
            run: dict[str, Any] = {}
            record = quiet.wait(f"http {index + 1}/{args.repeat}")
            if index == 0:  # warm-up both (after the wait: it loads the machine)
                for url, header in sides.values():
                    wrk(url, header, 2, args.connections)
            order = list(sides) if index % 2 == 0 else list(reversed(sides))
            for name in order:
                url, header = sides[name]
                run[name] = wrk(url, header, args.duration, args.connections)
            run["ratio"] = round(run["credits"]["rps"] / run["bare"]["rps"], 3)
            run["load"] = {**record, "load_after": loadavg()}
            print(
                f"[http {index + 1}/{args.repeat}] bare {run['bare']['rps']:.0f} req/s, "
                f"credits {run['credits']['rps']:.0f} req/s, ratio {run['ratio']:.2f}, "
                f"load {record['load_at_start']} -> {run['load']['load_after']}",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    finally:
        for proc in (app, bare):
            proc.terminate()
            proc.wait(timeout=30)
    results = {"bare": _median(runs, "bare"), "credits": _median(runs, "credits")}
    ratio = statistics.median(run["ratio"] for run in runs)  # each run's sides ran back to back
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"wrk -t2 -c{args.connections} -d{args.duration}s, one uvicorn process per side, "
        f"median of {len(runs)}"
    )
    print(f"{'route':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}")
    for name, r in (
        ("bare Litestar route", results["bare"]),
        ("GET /api/v1/billing/credits (key)", results["credits"]),
    ):
        print(
            f"{name:<34}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['errors']:>9.0f}"
        )
    print(f"ratio authenticated/bare (median of the runs' ratios): {ratio:.0%} (aim >= 60%)")
    for run in runs:
        load = run["load"]
        print(
            f"  run: ratio {run['ratio']:.2f}, load average before wait "
            f"{load['load_before_wait']}, waited {load['waited_s']} s, "
            f"at start {load['load_at_start']}, at end {load['load_after']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": when,
                "args": {k: str(v) for k, v in vars(args).items()},
                "machine": machine_facts(),
                **results,
                "ratio": round(ratio, 3),
                "aim": 0.60,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
