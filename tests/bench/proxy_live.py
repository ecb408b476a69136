"""The proxied request's server CPU, live: GPU Proxy and nginx ``proxy_pass`` side by side.

A short form of ``bench_proxy`` for issue 20's main measure (the serving process's CPU per
request, which this loaded 2-vCPU machine disturbs least): one seeded server per ``--variant``
(each an environment, e.g. the raw proxy protocol on and off), one nginx upstream answering a
small JSON body, nginx ``proxy_pass`` to it; ``wrk -t1`` at each connection count, the sides
interleaved, the order rotating each round. With ``--py-spy SECONDS`` the first variant's
server is watched by a tool at 16 connections, e.g. ``--attach "py-spy record --nonblocking -f
raw -o spy.txt -p {pid}"`` or ``--attach "perf record -g -o perf.data -p {pid}"`` (stopped with
SIGINT when wrk ends).

    .venv/bin/python -m tests.bench.proxy_live [--rounds 3] [--duration 3]
        [--variant NAME=ENV=VALUE,ENV=VALUE ...] [--attach CMD]

A variant's ``TREE=/path`` runs the server from another source tree (e.g. ``git archive`` of
the commit before a change), so old and new code are measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.bench import nginx_side
from tests.bench.bench_forwarder_clients import BODY
from tests.bench.bench_proxy import (
    Side,
    _check,
    _point_at,
    _rent_running,
    _seed,
    base_env,
    cpu_seconds,
    listening_pids,
    wrk,
)
from tests.bench.harness import loadavg
from tests.support.http import ROOT, stop_process, wait_healthy
from tests.support.pg import free_port


@contextlib.contextmanager
def _server(env: dict[str, str], log: Path, tree: Path) -> Iterator[str]:
    """``server_process`` run from the source tree ``tree`` (e.g. a worktree of the old code);
    ``SERVER_MODULE`` in ``env``: another entry point (``granian_side``), ``EXTRA_PATH``: more
    import paths."""
    env = dict(env)
    module = env.pop("SERVER_MODULE", "interfaces.server")
    path = ":".join(filter(None, (str(tree), env.pop("EXTRA_PATH", ""))))
    port = free_port()
    child = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"}
    child.update(GRPC_PORT=str(free_port()), LOG_FILE=str(log), PYTHONPATH=path)
    argv = [sys.executable, "-m", module]
    if module == "interfaces.server":
        argv += ["--env-file", "/nonexistent"]
    with tempfile.TemporaryFile() as console:
        proc = subprocess.Popen(
            argv,
            cwd=tree,
            env=child,
            stdout=console,
            stderr=subprocess.STDOUT,
        )

        def output() -> str:
            console.seek(0)
            return console.read().decode(errors="replace")

        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(proc, url, timeout=60, output=output)
            yield url
        finally:
            stop_process(proc)


@contextlib.contextmanager
def proxied_server(
    env: dict[str, str], up_port: int, log: Path, tree: Path = ROOT
) -> Iterator[tuple[str, str, str, list[int]]]:
    """A seeded server whose first user's instance points at ``up_port``: (url, header, base,
    pid); the server runs the code of ``tree``."""
    (user, key), _, _ = _seed(env)
    with _server(env, log, tree) as base:
        inst = _rent_running(base, key)
        _point_at(env, inst["id"], user, up_port)
        time.sleep(1.2)  # the proxy re-reads a user's instances after 1 s
        url = f"{base}/api/v1/gpu/proxy/{inst['id']}/health"
        pids = listening_pids(urlsplit(base).port or 80)
        yield url, f"X-API-Key: {key}", base, pids


def report(results: list[dict[str, Any]], names: list[str], conns: list[int]) -> None:
    if not results:
        return
    print("medians:")
    for c in conns:
        rows = [r for r in results if r["c"] == c]
        for name in names:
            cpu = sorted(r[name]["cpu_us"] for r in rows)
            p50 = sorted(r[name]["p50_ms"] for r in rows)
            rps = sorted(r[name]["rps"] for r in rows)
            mid = len(rows) // 2
            print(
                f"  c={c} {name}: cpu {cpu[mid]} µs/req (all {cpu}), p50 {p50[mid]:.3f} ms, "
                f"{rps[mid]:.0f} req/s"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=ENV=VALUE[,ENV=VALUE] (repeatable); TREE=path runs that tree's server code",
    )
    parser.add_argument(
        "--attach", default="", help="a command run on the server ({pid}) during a 16-conn wrk"
    )
    parser.add_argument("--attach-seconds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    variants: list[tuple[str, dict[str, str]]] = []
    for spec in args.variant or ["proxy"]:
        name, _, rest = spec.partition("=")
        extra = dict(item.split("=", 1) for item in rest.split(",") if item)
        variants.append((name, extra))
    conns = [int(c) for c in args.connections.split(",")]
    root = Path(tempfile.mkdtemp(prefix="gpuproxy-proxy-live-"))
    up_port, nginx_port = free_port(), free_port()
    procs = [
        nginx_side.upstream(root / "nginx-upstream", up_port, BODY),
        nginx_side.proxy_pass(root / "nginx-proxy", nginx_port, up_port),
    ]
    results: list[dict[str, Any]] = []
    try:
        sides = [Side("direct", "(a) direct", f"http://127.0.0.1:{up_port}/health")]
        sides.append(Side("nginx", "(n) nginx", f"http://127.0.0.1:{nginx_port}/health"))
        pids: dict[str, list[int]] = {
            "direct": listening_pids(up_port),
            "nginx": listening_pids(nginx_port),
        }
        with contextlib.ExitStack() as stack:
            for index, (name, extra) in enumerate(variants):
                data_dir = root / f"v{index}"
                data_dir.mkdir()
                tree = Path(extra.pop("TREE", ROOT))
                env = {**base_env(data_dir), **extra}
                url, header, _, server_pids = stack.enter_context(
                    proxied_server(env, up_port, data_dir / "server.log", tree)
                )
                sides.append(Side(name, name, url, header))
                pids[name] = server_pids
            for side in sides:
                _check(side, BODY)
                wrk(side, 1, max(conns))  # warm-up
            if args.attach:
                side = sides[2]
                command = shlex.split(args.attach.format(pid=pids[side.name][0]))
                tool = subprocess.Popen(command)
                time.sleep(1.0)
                got = wrk(side, args.attach_seconds, 16)
                tool.send_signal(signal.SIGINT)
                tool.wait(timeout=60)
                print(f"attach: {got['requests']} requests during the tool's run", flush=True)
            for index in range(args.rounds):
                shift = index % len(sides)
                order = sides[shift:] + sides[:shift]
                for c in conns:
                    row: dict[str, Any] = {"round": index + 1, "c": c, "load": loadavg()}
                    for side in order:
                        cpu0 = cpu_seconds(pids[side.name])
                        got = wrk(side, args.duration, c)
                        got["cpu_us"] = round(
                            (cpu_seconds(pids[side.name]) - cpu0) / max(1, got["requests"]) * 1e6,
                            1,
                        )
                        row[side.name] = got
                    results.append(row)
                    print(
                        f"round {index + 1} c={c} load {row['load']}: "
                        + "; ".join(
                            f"{s.name} {row[s.name]['rps']:.0f} req/s p50 "
                            f"{row[s.name]['p50_ms']:.3f} ms cpu {row[s.name]['cpu_us']} µs"
                            for s in sides
                        ),
                        flush=True,
                    )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    names = [s.name for s in sides]
    report(results, names, conns)
    if args.out:
        args.out.write_text(json.dumps({"sides": names, "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
