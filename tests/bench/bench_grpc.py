"""gRPC benchmark: unary ``HealthCheck`` and authenticated ``GetSpendingInfo`` vs a bare servicer.

Two servers on this machine, in the same run, each its own process: the real
``aiserve-gpuproxyd`` (SQLite embedded set-up, one user with an API key) and a bare grpclib
servicer built from the same generated code that answers both RPCs with constant messages
(no credentials, no database). This process loads each in turn with grpcio's asyncio client
(pre-encoded requests, answers kept as bytes: cheap next to the servers): one HTTP/2
connection, ``--streams`` (16) calls in flight, each starting the next as soon as the previous
answered; calls completed after ``--warmup`` seconds and within ``--duration`` are counted.
With ``--repeat N`` each pair is measured N times (order alternating) and the medians are
reported. Aim: each RPC at >= 60 % of bare. JSON: ``bench-results/grpc.json``.

    .venv/bin/python -m tests.bench.bench_grpc [--duration 10] [--streams 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpclib.client import Channel
from grpclib.server import Server

from domain.guardrails import WINDOW_NAMES, SpendingReport
from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from interfaces.grpc.convert import spending_windows
from interfaces.grpc.generated import gpuproxy as pb
from tests.bench.harness import Quiet, loadavg, machine_facts
from tests.support.http import JWT_SECRET, ROOT
from tests.support.pg import free_port

RPCS = ("HealthCheck", "GetSpendingInfo")
AIM = 0.60


class Bare(pb.GpuProxyServiceBase):
    """The floor: the same generated service answering constant messages built once, of the
    same shape and content as the real answers (so only framing and encoding are paid)."""

    def __init__(self) -> None:
        self.health = pb.HealthCheckResponse(
            status="ok", timestamp=int(time.time()), details={"service": "bare", "version": "0"}
        )
        self.spending = pb.GetSpendingInfoResponse(
            windows=spending_windows(
                SpendingReport.of(
                    datetime.now(UTC),
                    enabled=True,
                    spent={},
                    held=0,
                    limits={"60MIN": 100_000_000},
                )
            ),
            guard_rails_enabled=True,
        )

    async def health_check(self, _: pb.HealthCheckRequest) -> pb.HealthCheckResponse:
        return self.health

    async def get_spending_info(self, _: pb.GetSpendingInfoRequest) -> pb.GetSpendingInfoResponse:
        return self.spending


async def serve_bare(port: int) -> None:
    server = Server([Bare()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


async def closed_loop(
    port: int, rpc: str, key: str | None, streams: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """``streams`` callers back to back on one channel; counts and latencies in the window.

    The load comes from grpcio's asyncio client sending pre-encoded requests and keeping the
    answers as bytes (checked once before measuring), so the client costs little next to the
    Python servers it measures.
    """
    metadata = (("x-api-key", key),) if key else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(f"/gpuproxy.GPUProxyService/{rpc}")

        async def call() -> bytes:
            answer: bytes = await method(b"", metadata=metadata, timeout=30)
            return answer

        _check(rpc, await call())  # connect, and fail loudly before measuring
        start = time.perf_counter()
        begin, end = start + warmup, start + warmup + seconds
        latencies: list[float] = []
        errors: list[str] = []
        total = 0

        async def caller() -> None:
            while True:
                sent = time.perf_counter()
                if sent >= end:
                    return
                try:
                    await call()
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")
                    continue
                done = time.perf_counter()
                nonlocal total
                total += 1
                if begin <= sent and done <= end:
                    latencies.append((done - sent) * 1000)

        await asyncio.gather(*(caller() for _ in range(streams)))
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    return {
        "calls_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(pct(0.50), 3),
        "p99_ms": round(pct(0.99), 3),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "all_calls": total,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check(rpc: str, raw: bytes) -> None:
    if rpc == "HealthCheck":
        assert pb.HealthCheckResponse().parse(raw).status == "ok"
    else:
        assert len(pb.GetSpendingInfoResponse().parse(raw).windows) == len(WINDOW_NAMES)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    async def ping() -> None:
        async with Channel("127.0.0.1", port) as channel:
            await pb.GpuProxyServiceStub(channel).health_check(pb.HealthCheckRequest(), timeout=1)

    deadline = time.monotonic() + 60
    while True:
        try:
            asyncio.run(ping())
            return
        except Exception:  # not up yet
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _line(rpc: str, pair: dict[str, Any]) -> str:
    real, bare = pair["real"]["calls_per_s"], pair["bare"]["calls_per_s"]
    return f"{rpc} {real:.0f}/{bare:.0f} calls/s ({pair['ratio']:.0%})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--streams", type=int, default=16, help="calls in flight")
    parser.add_argument("--repeat", type=int, default=3, help="measure each pair N times")
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=900.0, help="seconds, all repeats")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "grpc.json")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _prepare(data_dir: Path) -> tuple[dict[str, str], str]:
    env = {
        "DATA_DIR": str(data_dir),
        "JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "GUARDRAILS_ENABLED": "true",
        "GUARDRAILS_MAX_60MIN_RATE": "100",
    }
    c = bootstrap(load_settings(env, env_file=None))
    user = c.users.create("bench@example.com", "bench-password", "Bench")
    c.ledger.grant(user.id, 100_000_000, key="bench-grant")
    c.runner.catch_up()
    _, key = c.auth.keys.create(user.id, "bench")
    c.close()
    return env, key


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        import uvloop  # the real server runs on uvicorn's loop, which is uvloop

        uvloop.run(serve_bare(args.serve_bare))
        return 0
    quiet = Quiet.for_run(enabled=not args.no_wait, below=args.quiet_load, max_wait=args.max_wait)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    data_dir = Path(tempfile.mkdtemp(prefix="gpuproxy-bench-grpc-"))
    env, key = _prepare(data_dir)
    real_port, bare_port = free_port(), free_port()
    real = _spawn(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
        {**env, "PORT": str(free_port()), "HOST": "127.0.0.1", "GRPC_PORT": str(real_port)},
        data_dir / "server.log",
    )
    bare = _spawn(
        [sys.executable, "-m", "tests.bench.bench_grpc", "--serve-bare", str(bare_port)],
        {},
        data_dir / "bare.log",
    )
    sides = {"real": (real_port, key), "bare": (bare_port, None)}
    procs = {"real": real, "bare": bare}
    runs: list[dict[str, Any]] = []
    try:
        _wait_port(real_port, real, data_dir / "server.log")
        _wait_port(bare_port, bare, data_dir / "bare.log")
        for index in range(args.repeat):
            run: dict[str, Any] = {}
            record = quiet.wait(f"grpc {index + 1}/{args.repeat}")
            order = list(sides) if index % 2 == 0 else list(reversed(sides))
            for rpc in RPCS:
                run[rpc] = {}
                for side in order:
                    port, credential = sides[side]
                    pid = procs[side].pid
                    cpu = cpu_seconds(pid)
                    measured = asyncio.run(
                        closed_loop(
                            port,
                            rpc,
                            credential if side == "real" else None,
                            args.streams,
                            args.warmup,
                            args.duration,
                        )
                    )
                    used = cpu_seconds(pid) - cpu
                    measured["server_cpu_us_per_call"] = round(
                        used / max(1, measured["all_calls"]) * 1e6, 1
                    )
                    run[rpc][side] = measured
                bare_rate = run[rpc]["bare"]["calls_per_s"]
                run[rpc]["ratio"] = round(run[rpc]["real"]["calls_per_s"] / bare_rate, 3)
            run["load"] = {**record, "load_after": loadavg()}
            print(
                f"[grpc {index + 1}/{args.repeat}] "
                + ", ".join(_line(rpc, run[rpc]) for rpc in RPCS)
                + f", load {record['load_at_start']} -> {run['load']['load_after']}",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    finally:
        for proc in (real, bare):
            proc.terminate()
            proc.wait(timeout=30)
    summary: dict[str, Any] = {}
    for rpc in RPCS:
        summary[rpc] = {
            side: {
                k: round(statistics.median(r[rpc][side][k] for r in runs), 3)
                for k in ("calls_per_s", "p50_ms", "p99_ms", "errors", "server_cpu_us_per_call")
            }
            for side in sides
        }
        summary[rpc]["ratio"] = round(statistics.median(r[rpc]["ratio"] for r in runs), 3)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"grpcio asyncio client, 1 connection, {args.streams} calls in flight, {args.duration:g} s "
        f"after {args.warmup:g} s warm-up, one server process per side, median of {len(runs)}"
    )
    print(
        f"{'RPC':<34}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
        f"{'server CPU µs/call':>20}"
    )
    for rpc in RPCS:
        for side, label in (("bare", f"{rpc} (bare servicer)"), ("real", f"{rpc} (gpuproxyd)")):
            r = summary[rpc][side]
            print(
                f"{label:<34}{r['calls_per_s']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                f"{r['errors']:>8.0f}{r['server_cpu_us_per_call']:>20.0f}"
            )
        ratio = summary[rpc]["ratio"]
        verdict = "met" if ratio >= AIM else "NOT met"
        cpu = summary[rpc]["bare"]["server_cpu_us_per_call"] / max(
            1.0, summary[rpc]["real"]["server_cpu_us_per_call"]
        )
        print(
            f"  ratio {rpc} gpuproxyd/bare: {ratio:.0%} (aim >= {AIM:.0%}: {verdict}); "
            f"by server CPU per call: {cpu:.0%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": when,
                "args": {k: str(v) for k, v in vars(args).items()},
                "machine": machine_facts(),
                **summary,
                "aim": AIM,
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
