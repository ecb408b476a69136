"""Proxy HTTP client benchmark: a bare Litestar forwarder with httpx vs aiohttp (ADR 0008).

Starts, each as one uvicorn process on this machine: a fast upstream (a raw ASGI app answering
a small JSON body), and a bare Litestar app with one route, ``GET /fwd``, that forwards to the
upstream and returns its body, once per client:

- ``httpx``: one shared ``httpx.AsyncClient`` (256 connections, keep-alive);
- ``aiohttp``: one shared ``aiohttp.ClientSession`` (256 connections, keep-alive);
- ``forwarder``: ``infrastructure.proxy.forwarder.Forwarder`` (aiohttp, with the header
  filtering and time limits the proxy routes use).

Each is loaded, interleaved with the others (the order rotates each repeat) and with the
upstream itself (``direct``), by ``wrk -t1`` (Debian's package; without it, an aiohttp load
generator in a subprocess) at 1 and 16 connections. Reports the median req/s and p50 latency
and each run's ratio to ``direct`` and aiohttp/httpx; the machine is small and noisy, so the
ratios, taken between runs that ran back to back, are the numbers to read.

    .venv/bin/python -m tests.bench.bench_forwarder_clients [--duration 5] [--repeat 3]
        [--connections 1,16] [--no-wait] [--out bench-results/forwarder-clients.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from litestar import Litestar, Request, Response, get

from infrastructure.proxy.forwarder import Forwarder, forward_request_headers
from tests.bench.harness import Quiet, loadavg, machine_facts
from tests.support.pg import free_port

ROOT = Path(__file__).resolve().parents[2]
BODY = b'{"model":"demo","outputs":[{"name":"y","datatype":"FP32","shape":[4],"data":[1,3,5,7]}]}'
CLIENTS = ("httpx", "aiohttp", "forwarder")
SIDES = ("direct", *CLIENTS)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

# ------------------------------------------------------------------------- the servers

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The fast upstream: every HTTP request gets the same small JSON body."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def make_app() -> Any:
    """The bare forwarder (``uvicorn --factory``): client from ``$BENCH_CLIENT``, upstream URL
    from ``$BENCH_UPSTREAM``."""
    client = os.environ["BENCH_CLIENT"]
    upstream = os.environ["BENCH_UPSTREAM"]
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if client == "httpx":
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
            async with httpx.AsyncClient(limits=limits, timeout=30) as http:
                state["http"] = http
                yield
        elif client == "aiohttp":
            connector = aiohttp.TCPConnector(limit=256)
            async with aiohttp.ClientSession(connector=connector) as session:
                state["session"] = session
                yield
        else:
            async with Forwarder(max_connections=256) as forwarder:
                state["forwarder"] = forwarder
                yield

    @get("/fwd")
    async def forward(request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = forward_request_headers(request.headers.items())
        if client == "httpx":
            r = await state["http"].get(upstream, headers=headers)
            return Response(r.content, status_code=r.status_code, media_type="application/json")
        if client == "aiohttp":
            async with state["session"].get(upstream, headers=headers) as resp:
                body = await resp.read()
            return Response(body, status_code=resp.status, media_type="application/json")
        upstream_response = await state["forwarder"].send(
            "GET", upstream, headers, None, timeout=30
        )
        body = await upstream_response.read()
        return Response(body, status_code=upstream_response.status, media_type="application/json")

    return Litestar(route_handlers=[forward], lifespan=[lifespan], logging_config=None)


# ------------------------------------------------------------------------ load generators


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": errors.group(1) if errors else "",  # type: ignore[dict-item]
    }


async def _aiohttp_load(url: str, seconds: float, connections: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                async with s.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - start) * 1000)

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] if latencies else 0.0,
        "errors": float(errors),
        "socket_errors": "",
    }


def aiohttp_load(url: str, seconds: int, connections: int) -> dict[str, Any]:
    """The fallback load generator, in its own process (never in the measured servers')."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.bench_forwarder_clients",
            "--load",
            url,
            str(seconds),
            str(connections),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


# ------------------------------------------------------------------------------- driver


def serve_uvicorn(
    target: str, port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """``uvicorn TARGET`` on ``port`` in a child process (``make_app`` as a factory)."""
    argv = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
    argv += ["--no-access-log", "--log-level", "warning"]
    if target.endswith("make_app"):
        argv.append("--factory")
    with log.open("wb") as handle:
        return subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
        )


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    parser.add_argument("--connections", default="1,16", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds, all repeats")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    load = wrk if use_wrk else aiohttp_load
    quiet = Quiet.for_run(enabled=not args.no_wait, below=args.quiet_load, max_wait=args.max_wait)
    conns = [int(c) for c in args.connections.split(",")]
    logs = Path(tempfile.mkdtemp(prefix="gpuproxy-bench-fwd-"))
    ports = {side: free_port() for side in SIDES}
    upstream = f"http://127.0.0.1:{ports['direct']}/fwd"
    urls = {side: f"http://127.0.0.1:{ports[side]}/fwd" for side in SIDES}
    procs = [
        serve_uvicorn(
            "tests.bench.bench_forwarder_clients:upstream_app",
            ports["direct"],
            {},
            logs / "upstream.log",
        )
    ]
    for client in CLIENTS:
        env = {"BENCH_CLIENT": client, "BENCH_UPSTREAM": upstream}
        target = "tests.bench.bench_forwarder_clients:make_app"
        procs.append(serve_uvicorn(target, ports[client], env, logs / f"{client}.log"))
    runs: list[dict[str, Any]] = []
    try:
        for url in urls.values():
            _wait(url)
        for url in urls.values():  # warm-up: connections, code paths
            load(url, 1, max(conns))
        for index in range(args.repeat):
            for c in conns:
                record = quiet.wait(f"fwd {index + 1}/{args.repeat} c={c}")
                order = list(SIDES[index % len(SIDES) :] + SIDES[: index % len(SIDES)])
                run: dict[str, Any] = {"connections": c, "order": order}
                for side in order:
                    run[side] = load(urls[side], args.duration, c)
                run["ratio_to_direct"] = {
                    side: round(run[side]["rps"] / run["direct"]["rps"], 3) for side in CLIENTS
                }
                run["aiohttp_over_httpx"] = round(run["aiohttp"]["rps"] / run["httpx"]["rps"], 2)
                run["forwarder_over_aiohttp"] = round(
                    run["forwarder"]["rps"] / run["aiohttp"]["rps"], 2
                )
                run["load"] = {**record, "load_after": loadavg()}
                print(
                    f"[fwd {index + 1}/{args.repeat} c={c}] "
                    + ", ".join(f"{s} {run[s]['rps']:.0f}" for s in SIDES)
                    + f" req/s; aiohttp/httpx {run['aiohttp_over_httpx']:.2f}, "
                    f"forwarder/aiohttp {run['forwarder_over_aiohttp']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    summary = report(runs, conns, args, use_wrk=bool(use_wrk))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "when": datetime.now(UTC).isoformat(timespec="seconds"),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": machine_facts(),
                    "summary": summary,
                    "runs": runs,
                },
                indent=2,
            )
            + "\n"
        )
    shutil.rmtree(logs, ignore_errors=True)
    return 0


def report(
    runs: list[dict[str, Any]], conns: list[int], args: argparse.Namespace, *, use_wrk: bool
) -> dict[str, Any]:
    """Print the medians and ratios; return them."""
    summary: dict[str, Any] = {}
    print(
        f"load generator: {'wrk -t1' if use_wrk else 'aiohttp (subprocess)'}, "
        f"{args.duration}s per run, median of {args.repeat}, one uvicorn process per server, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'side':<12}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'x direct':>10}{'errors':>8}")
    for c in conns:
        mine = [r for r in runs if r["connections"] == c]
        summary[str(c)] = {}
        for side in SIDES:
            rps = statistics.median(r[side]["rps"] for r in mine)
            p50 = statistics.median(r[side]["p50_ms"] for r in mine)
            errors = sum(r[side]["errors"] for r in mine)
            ratio = (
                statistics.median(r["ratio_to_direct"][side] for r in mine)
                if side != "direct"
                else 1.0
            )
            summary[str(c)][side] = {
                "rps": round(rps, 1),
                "p50_ms": round(p50, 3),
                "ratio_to_direct": ratio,
                "errors": errors,
            }
            print(f"{side:<12}{c:>6}{rps:>10.0f}{p50:>9.2f}{ratio:>10.2f}{errors:>8.0f}")
        for key in ("aiohttp_over_httpx", "forwarder_over_aiohttp"):
            ratio = statistics.median(r[key] for r in mine)
            summary[str(c)][key] = ratio
            label = key.replace("_over_", "/")
            print(f"{'':<12}{c:>6}  {label} (median of the runs' ratios): {ratio:.2f}")
    return summary


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--load":  # the fallback load generator
        print(
            json.dumps(
                asyncio.run(_aiohttp_load(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
            )
        )
        sys.exit(0)
    sys.exit(main())
