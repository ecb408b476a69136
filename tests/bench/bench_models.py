"""Model serving benchmark: prediction latency and throughput vs a direct ``session.run``.

One small model (dense 4 → 3 with softmax, ONNX opset 17, the one the tests build) is
uploaded to a real server and called, side by side in one run on one machine:

- **direct**: ``onnxruntime.InferenceSession.run`` in this process (the same session options
  the server uses: one intra-op thread, all graph optimisations), one row;
- **direct+pool**: the same through a one-thread ``ThreadPoolExecutor`` hop (what the server
  adds to keep inference off its event loop);
- **http floor**: ``GET /health`` of the server (no auth, no body): HTTP alone;
- **predict**: ``POST /api/v1/models/{id}/predict`` ``{"input": [4 floats]}`` with
  ``X-API-Key`` (auth, rate limit, record cache, input check, lease spend, thread hop, usage
  counters, JSON answer);
- **oip-rest**: ``POST /v2/models/{id}/infer`` with a JSON tensor;
- **oip-grpc**: ``ModelInfer`` through ``tritonclient.grpc`` (raw tensor contents), against
  the ``inference.GRPCInferenceService`` servicer; **grpc floor**: ``ServerLive`` the same way.

The server is this module run as ``--serve``: the real app (``create_app``, lifespan on, the
projection runner on) under uvicorn and the OIP servicer on a grpclib ``Server``, on one event
loop, as ``aiserve-gpuproxyd`` hosts them; SQLite embedded set-up. HTTP sides are loaded by
``wrk --latency`` (Lua script for the POST bodies); gRPC sides by Python threads running
``tritonclient.grpc`` clients. Latency at 1 connection, throughput at 16, each side for
``--duration`` seconds, interleaved for ``--rounds`` rounds; medians reported. Throughput is
measured twice: with ``MODEL_BATCHING`` off and on (a second server). Added p50 = side p50 -
direct p50 (aim: ≤ 1 ms for predict and OIP). JSON: ``bench-results/models.json``.

    .venv/bin/python -m tests.bench.bench_models [--duration 5] [--rounds 3] [--no-wait]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.bench.harness import Quiet, closed_loop, loadavg, machine_facts
from tests.integration.test_models_support import add_user, dense_onnx, stored_dense

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
ROW = [0.5, -1.0, 2.0, 0.25]
JWT = "bench-secret-0123456789-abcdefghijklmnop"


# ------------------------------------------------------------------ the server


def serve(http_port: int, grpc_port: int) -> None:
    """``--serve``: the app and the OIP gRPC servicer on one loop until SIGTERM."""
    import signal

    import uvicorn
    from grpclib.server import Server

    from infrastructure.settings import load_settings
    from interfaces.bootstrap import bootstrap
    from interfaces.grpc_inference.service import InferenceService
    from interfaces.http.app import create_app

    container = bootstrap(load_settings(env_file=None), run_projections=True)

    async def main() -> None:
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(container),
                host="127.0.0.1",
                port=http_port,
                log_config=None,
                access_log=False,
                lifespan="on",
            )
        )
        grpc = Server([InferenceService(container)])
        await grpc.start("127.0.0.1", grpc_port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: setattr(server, "should_exit", True))
        await server.serve()
        grpc.close()
        await grpc.wait_closed()

    try:
        asyncio.run(main())
    finally:
        container.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.bench_models",
                "--serve",
                str(self.http),
                str(self.grpc),
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench server did not start; see {log}")
            time.sleep(0.2)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ------------------------------------------------------------------ load generators


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(url: str, seconds: int, connections: int, script: Path | None) -> dict[str, Any]:
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def post_script(folder: Path, name: str, key: str, body: dict[str, Any]) -> Path:
    path = folder / f"{name}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-API-Key"] = "{key}"\n'
    )
    return path


def grpc_load(
    target: str, key: str, model: str, threads: int, seconds: float, live: bool
) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    x = np.asarray([ROW], dtype=np.float32)
    clients: dict[int, Any] = {}

    def make_op(index: int) -> Any:
        client = clients[index] = grpcclient.InferenceServerClient(url=target)
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        meta = {"x-api-key": key}
        if live:
            return lambda _seq: client.is_server_live()
        return lambda _seq: client.infer(model, [tensor], headers=meta)

    result = closed_loop(
        threads, make_op, warmup=1.0, seconds=seconds, teardown=lambda i: clients[i].close()
    )
    summary = result.summary()
    return {
        "rps": summary["ops_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": len(result.errors),
    }


def direct(content: bytes, seconds: float, pool: bool) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    feeds = {"x": np.asarray([ROW], dtype=np.float32)}
    executor = ThreadPoolExecutor(max_workers=1)

    def once() -> None:
        if pool:
            executor.submit(session.run, None, feeds).result()
        else:
            session.run(None, feeds)

    for _ in range(500):
        once()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        once()
        samples.append((time.perf_counter() - start) * 1000)
    executor.shutdown()
    ordered = sorted(samples)
    return {
        "rps": round(len(samples) / seconds, 1),
        "p50_ms": round(statistics.median(ordered), 4),
        "p99_ms": round(ordered[int(0.99 * len(ordered))], 4),
        "errors": 0,
    }


def engine_load(content: bytes, seconds: float, batching: bool, clients: int) -> dict[str, Any]:
    """``OnnxEngine`` in this process, ``clients`` concurrent callers, no HTTP: what batching
    gains where inference, not the web stack, is the work."""
    from infrastructure.models.batching import BatchConfig
    from infrastructure.models.engine import OnnxEngine
    from infrastructure.models.storage import LocalStorage

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        storage = LocalStorage(Path(tmp))
        record = stored_dense(Path(tmp), "bench", content)

        async def run() -> dict[str, Any]:
            engine = OnnxEngine(
                storage, cache_bytes=1 << 30, batching=BatchConfig() if batching else None
            )
            await engine.run(record, engine.prepare(record, {"x": ROW}))
            latencies: list[float] = []
            stop = time.perf_counter() + seconds

            async def client() -> None:
                while time.perf_counter() < stop:
                    start = time.perf_counter()
                    await engine.run(record, engine.prepare(record, {"x": ROW}))
                    latencies.append((time.perf_counter() - start) * 1000)

            await asyncio.gather(*(client() for _ in range(clients)))
            await engine.aclose()
            ordered = sorted(latencies)
            return {
                "rps": round(len(ordered) / seconds, 1),
                "p50_ms": round(ordered[len(ordered) // 2], 4),
                "p99_ms": round(ordered[int(0.99 * len(ordered))], 4),
                "errors": 0,
            }

        return asyncio.run(run())


# ------------------------------------------------------------------ the run


def seed(env: dict[str, str]) -> str:
    from infrastructure.settings import load_settings
    from interfaces.bootstrap import bootstrap

    c = bootstrap(load_settings(env, env_file=None))
    try:
        return add_user(c, "bench")[1]
    finally:
        c.close()


def upload(base: str, key: str, content: bytes) -> str:
    response = httpx.post(
        f"{base}/api/v1/models/upload",
        files={"model": ("dense.onnx", content)},
        data={"name": "dense"},
        headers={"X-API-Key": key},
        timeout=120,
    )
    response.raise_for_status()
    model_id: str = response.json()["model_id"]
    check = httpx.post(
        f"{base}/api/v1/models/{model_id}/predict",
        json={"input": ROW},
        headers={"X-API-Key": key},
        timeout=60,
    )
    check.raise_for_status()
    return model_id


def measure(
    run: Running,
    key: str,
    model: str,
    folder: Path,
    args: argparse.Namespace,
    connections: int,
    sides: list[str],
    content: bytes,
    batching: bool = False,
) -> dict[str, dict[str, Any]]:
    predict = post_script(folder, "predict", key, {"input": ROW})
    oip = post_script(
        folder,
        "oip",
        key,
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
    )
    target = f"127.0.0.1:{run.grpc}"
    out: dict[str, dict[str, Any]] = {}
    for side in sides:
        if side == "direct":
            out[side] = direct(content, args.duration, pool=False)
        elif side == "direct+pool":
            out[side] = direct(content, args.duration, pool=True)
        elif side == "engine":
            out[side] = engine_load(content, args.duration, batching, connections)
        elif side == "http-floor":
            out[side] = wrk(f"{run.base}/health", args.duration, connections, None)
        elif side == "predict":
            out[side] = wrk(
                f"{run.base}/api/v1/models/{model}/predict", args.duration, connections, predict
            )
        elif side == "oip-rest":
            out[side] = wrk(f"{run.base}/v2/models/{model}/infer", args.duration, connections, oip)
        elif side == "grpc-floor":
            out[side] = grpc_load(target, key, model, connections, args.duration, live=True)
        elif side == "oip-grpc":
            out[side] = grpc_load(target, key, model, connections, args.duration, live=False)
    return out


def median_of(rounds: list[dict[str, dict[str, Any]]], side: str) -> dict[str, float]:
    return {
        k: round(statistics.median(r[side][k] for r in rounds), 4)
        for k in ("rps", "p50_ms", "p99_ms", "errors")
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=300.0)
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "models.json"))
    return parser.parse_args(argv)


LATENCY_SIDES = [
    "direct",
    "direct+pool",
    "http-floor",
    "predict",
    "oip-rest",
    "grpc-floor",
    "oip-grpc",
]
THROUGHPUT_SIDES = ["direct", "engine", "predict", "oip-rest", "oip-grpc"]


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    args = parse_args(argv)
    quiet = Quiet.for_run(enabled=not args.no_wait, below=args.quiet_load, max_wait=args.max_wait)
    content, _ = dense_onnx()
    results: dict[str, Any] = {"machine": machine_facts(), "args": vars(args), "waits": []}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        folder = Path(tmp)
        env = {
            "DATA_DIR": str(folder / "data"),
            "JWT_SECRET": JWT,
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "LOG_LEVEL": "WARNING",
            "GRPC_ENABLED": "false",
            "MODEL_USAGE_FLUSH_SECONDS": "5",
        }
        key = seed(env)
        for batching in ("false", "true"):
            run = Running({**env, "MODEL_BATCHING": batching}, folder / f"server-{batching}.log")
            try:
                model = upload(run.base, key, content) if batching == "false" else "dense"
                results["waits"].append(quiet.wait(f"batching={batching}"))
                label = "batching" if batching == "true" else "plain"
                if batching == "false":
                    lat = [
                        measure(run, key, model, folder, args, 1, LATENCY_SIDES, content)
                        for _ in range(args.rounds)
                    ]
                    results["latency_1"] = {s: median_of(lat, s) for s in LATENCY_SIDES}
                thr = [
                    measure(
                        run,
                        key,
                        model,
                        folder,
                        args,
                        16,
                        THROUGHPUT_SIDES,
                        content,
                        batching == "true",
                    )
                    for _ in range(args.rounds)
                ]
                results[f"throughput_16_{label}"] = {s: median_of(thr, s) for s in THROUGHPUT_SIDES}
                results["load_end"] = loadavg()
            finally:
                run.stop()
    base = results["latency_1"]["direct"]["p50_ms"]
    results["added_p50_ms"] = {
        s: round(v["p50_ms"] - base, 3) for s, v in results["latency_1"].items()
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in {"args"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
