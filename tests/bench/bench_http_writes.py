"""Head and body in one write (``interfaces/http_writes.py``) against uvicorn's two writes.

Two uvicorn processes serve the same raw ASGI app (``bench_forwarder_clients:upstream_app``,
an 88-byte JSON answer): one with uvicorn's own ``httptools`` protocol, one with the server's
``BoundedHttpProtocol`` (header deadline, connection cap, and the one write). ``wrk -t1`` loads
each in turn, the order swapping every round, at 1 and 16 connections; per side: req/s, p50
and the serving process's CPU µs per request (``/proc/PID/stat``, which the machine's other
load moves far less than req/s). Ratios are taken per round between sides measured seconds
apart; medians reported. JSON: ``bench-results/http_writes.json``.

    .venv/bin/python -m tests.bench.bench_http_writes [--duration 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.bench_forwarder_clients import _wait
from tests.bench.bench_proxy import Side, cpu_seconds, wrk
from tests.bench.harness import loadavg, machine_facts
from tests.support.http import ROOT
from tests.support.pg import free_port

PROTOCOLS = {
    "uvicorn": "httptools",  # head and body: two writes
    "ours": "interfaces.http_limits:BoundedHttpProtocol",  # one write
}


def _serve(protocol: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", "tests.bench.bench_forwarder_clients:upstream_app"]
    argv += ["--port", str(port), "--http", protocol, "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as handle:
        return subprocess.Popen(argv, cwd=ROOT, env=os.environ, stdout=handle, stderr=handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=2, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "http_writes.json")
    args = parser.parse_args(argv)
    conns = [int(c) for c in args.connections.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-writes-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    sides: dict[str, Side] = {}
    runs: list[dict[str, Any]] = []
    try:
        for name, protocol in PROTOCOLS.items():
            port = free_port()
            procs[name] = _serve(protocol, port, tmp / f"{name}.log")
            sides[name] = Side(name, name, f"http://127.0.0.1:{port}/")
        for side in sides.values():
            _wait(side.url)
            wrk(side, 1, max(conns))  # warm-up
        for index in range(args.rounds):
            order = list(sides) if index % 2 == 0 else list(reversed(sides))
            for c in conns:
                run: dict[str, Any] = {"round": index + 1, "connections": c, "load": loadavg()}
                for name in order:
                    pids = [procs[name].pid]
                    cpu0 = cpu_seconds(pids)
                    got = wrk(sides[name], args.duration, c)
                    got["server_cpu_us"] = round(
                        (cpu_seconds(pids) - cpu0) / max(1, got["requests"]) * 1e6, 1
                    )
                    run[name] = got
                run["ours_over_uvicorn_rps"] = round(run["ours"]["rps"] / run["uvicorn"]["rps"], 3)
                run["ours_over_uvicorn_cpu"] = round(
                    run["ours"]["server_cpu_us"] / run["uvicorn"]["server_cpu_us"], 3
                )
                runs.append(run)
                print(
                    f"[round {index + 1} c={c}] "
                    + ", ".join(
                        f"{n} {run[n]['rps']:.0f} req/s {run[n]['server_cpu_us']} µs CPU"
                        for n in sides
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    summary: dict[str, Any] = {}
    for c in conns:
        mine = [r for r in runs if r["connections"] == c]
        summary[str(c)] = {
            name: {
                key: statistics.median(r[name][key] for r in mine)
                for key in ("rps", "p50_ms", "server_cpu_us")
            }
            for name in sides
        }
        for key in ("ours_over_uvicorn_rps", "ours_over_uvicorn_cpu"):
            summary[str(c)][key] = {
                "median": statistics.median(r[key] for r in mine),
                "rounds": [r[key] for r in mine],
            }
        row = summary[str(c)]
        print(
            f"{c:>3} conns: uvicorn {row['uvicorn']['rps']:.0f} req/s, p50 "
            f"{row['uvicorn']['p50_ms']:.3f} ms, {row['uvicorn']['server_cpu_us']:.1f} µs CPU; "
            f"ours {row['ours']['rps']:.0f} req/s, p50 {row['ours']['p50_ms']:.3f} ms, "
            f"{row['ours']['server_cpu_us']:.1f} µs CPU; ours/uvicorn req/s "
            f"{row['ours_over_uvicorn_rps']['median']:.3f}, CPU per request "
            f"{row['ours_over_uvicorn_cpu']['median']:.3f}"
        )
    print(f"load average per round: {[r['load'] for r in runs]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine_facts(),
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
