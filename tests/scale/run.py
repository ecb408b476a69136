"""The scale test: ``python -m tests.scale.run`` (``make scale-test``).

Three ``aiserve-gpuproxyd`` replicas (WORKERS=1 each) on one PostgreSQL through PgBouncer
(transaction mode) and one Redis, behind nginx; a fake vast.ai whose instances answer on a
fast loopback upstream. A mixed load runs ``SCALE_SECONDS`` (default 90) while, one at a time,
a replica is SIGKILLed and restarted, Redis restarted, PostgreSQL restarted (``-m fast``) and
PgBouncer restarted. Then the checks of ``tests.scale.checks`` run; the JSON result goes to
``SCALE_OUT`` (default ``test-artifacts/scale-result.json``). Exit status 0 only if all pass.
Everything listens on 127.0.0.1; the run stops by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import bootstrap
from tests.fake_servers.vastai import DEFAULT_API_KEY, FakeVastAi, make_offer
from tests.scale import checks
from tests.scale.checks import Fault
from tests.scale.load import Load
from tests.scale.stack import (
    ROOT,
    Daemon,
    nginx_daemon,
    pgbouncer_daemon,
    redis_daemon,
    replica_daemon,
    restart_postgres,
    wait_http,
    wait_port,
    wait_redis,
)
from tests.support.pg import Cluster, free_port, running_cluster

JWT_SECRET = "scale-secret-0123456789-abcdefghijklmnop"
PASSWORD = "correct-horse-battery"
REPLICAS = 3
PAYERS = 4
RATE_LIMIT = 100  # per user per minute, across all replicas
METERING_INTERVAL = 2.0
PROXY_PRICE = 1_000  # micro-USD per proxied request (PROXY_REQUEST_PRICE)
GAP = 12.0  # seconds of plain load after each fault
OFFERS = range(55_000_001, 55_000_401)


class ScaleVast(FakeVastAi):
    """The fake vast.ai; every instance's mapped port is the fast loopback upstream."""

    def __init__(self, upstream_port: int) -> None:
        offers = [
            # cheapest first in the order they are rented, so the next ones are always found
            make_offer(i, "RTX 4090", dph_base=0.30 + n / 10_000, public_ipaddr="127.0.0.1")
            for n, i in enumerate(OFFERS)
        ]
        super().__init__(offers=offers, loading_after_s=0.3, running_after_s=1.0)
        self.upstream_port = upstream_port

    def _view(self, instance: Any) -> dict[str, Any]:
        view = super()._view(instance)
        if view.get("ports"):
            port = str(self.upstream_port)
            view["ports"] = {
                key: [{**b, "HostPort": port} for b in rows] for key, rows in view["ports"].items()
            }
        return view


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def replica_env(
    cluster: Cluster, bouncer: Daemon | None, redis: Daemon, vast_url: str
) -> dict[str, str]:
    env = {
        "DB_TYPE": "postgres",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(bouncer.port if bouncer else cluster.port),
        "DB_USER": cluster.user,
        "DB_PASSWORD": "",
        "DB_NAME": "scale",
        "DB_MAX_CONNS": "20",
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "SESSION_MODE": "balanced",
        "JWT_SECRET": JWT_SECRET,
        "WORKERS": "1",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        "METERING_INTERVAL_SECONDS": str(METERING_INTERVAL),
        "INSTANCE_POLL_SECONDS": "0.5",
        "PROJECTION_POLL_INTERVAL": "0.5",
        "PROXY_REQUEST_PRICE": "0.001000",
        "PROXY_LEASE_AMOUNT": "0.05",
        "PROXY_USAGE_FLUSH_SECONDS": "2",
        "HOLD_SWEEP_SECONDS": "2",  # also recovers a killed replica's proxy leases (ADR 0029)
        "ALLOW_PRIVATE_TARGETS": "true",
        "SANDBOX_PROVIDER_ENABLED": "false",
        "VASTAI_API_KEY": DEFAULT_API_KEY,
        "VASTAI_API_URL": vast_url,
        "DATA_DIR": "",
        "LOG_LEVEL": "INFO",
    }
    if bouncer is not None:
        env.update(
            DB_POOLER="pgbouncer", DB_DIRECT_HOST="127.0.0.1", DB_DIRECT_PORT=str(cluster.port)
        )
    return env


def seed(settings: Settings) -> dict[str, Any]:
    """Users and API keys (admin, payers, the rate-limited one, the probe) and opening grants."""
    c = bootstrap(settings)  # applies the migrations
    try:
        out: dict[str, Any] = {"payers": []}
        admin = c.users.create("admin@scale.test", PASSWORD, "Admin")
        c.users.set_admin(admin.email)
        c.ledger.open_account(admin.id)
        out["admin_key"] = c.auth.keys.create(admin.id, "scale")[1]
        for i in range(PAYERS):
            user = c.users.create(f"payer{i}@scale.test", PASSWORD, f"Payer {i}")
            c.ledger.grant(user.id, 20_000_000, key=f"seed-{i}", source="admin", reason="seed")
            c.ledger.set_cap(user.id, 1_000_000 * i, actor="scale", reason="scale test")
            out["payers"].append((user.id, c.auth.keys.create(user.id, "scale")[1]))
        for name in ("rate", "probe"):
            user = c.users.create(f"{name}@scale.test", PASSWORD, name)
            c.ledger.open_account(user.id)
            out[f"{name}_key"] = c.auth.keys.create(user.id, "scale")[1]
        return out
    finally:
        c.close()


class Monitor:
    """Probes every door twice a second and reads the log head and projection positions."""

    def __init__(self, nginx: str, replicas: list[str], probe_key: str, dsn: str) -> None:
        self.nginx, self.replicas, self.key, self.dsn = nginx, replicas, probe_key, dsn
        self.samples: list[tuple[float, bool, bool]] = []  # (t, every door fine, nginx fine)
        self.positions: list[tuple[float, int, int]] = []  # (t, head, slowest projection)
        self.stop = False

    async def probe(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while not self.stop:
                t = time.monotonic()
                urls = [f"{u}/ready" for u in self.replicas]
                calls = [client.get(u) for u in urls]
                calls.append(
                    client.get(
                        f"{self.nginx}/api/v1/billing/credits", headers={"X-API-Key": self.key}
                    )
                )
                answers = await asyncio.gather(*calls, return_exceptions=True)
                good = [isinstance(a, httpx.Response) and a.status_code == 200 for a in answers]
                self.samples.append((t, all(good), good[-1]))
                await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - t)))

    def watch_positions(self) -> None:
        import psycopg

        while not self.stop:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                    while not self.stop:
                        head = conn.execute("SELECT max(notification_id) FROM ledger_events")
                        h = int(head.fetchone()[0] or 0)  # type: ignore[index]
                        low = conn.execute("SELECT min(position) FROM projection_state")
                        p = int(low.fetchone()[0] or 0)  # type: ignore[index]
                        self.positions.append((time.monotonic(), h, p))
                        time.sleep(0.5)
            except psycopg.Error:
                time.sleep(0.3)

    def settle(self, fault: Fault) -> None:
        """Fill in when every door answered again (two samples in a row) and when the read
        models reached the log head as it was then."""
        pairs = list(itertools.pairwise(self.samples))
        streak = [a[0] for a, b in pairs if a[0] >= fault.back and a[1] and b[1]]
        fault.full = streak[0] if streak else 0.0
        end = fault.full or float("inf")
        failed = [t for t, _, front in self.samples if fault.start <= t <= end and not front]
        fault.front = max(failed) if failed else 0.0  # the last failed probe through nginx
        if not fault.full:
            return
        head = next((h for t, h, _ in self.positions if t >= fault.full), None)
        if head is None:
            return
        fault.caught_up = next(
            (t for t, _, p in self.positions if t >= fault.full and p >= head), 0.0
        )


def run_faults(
    faults: list[Fault],
    plan: list[tuple[float, str]],
    t0: float,
    actions: dict[str, Any],
    load: Load,
) -> None:
    """One fault at a time, at least ``GAP`` seconds after the last one was over; the load
    runs on until ``GAP`` seconds after the last fault."""
    ready = t0
    for at, name in plan:
        while time.monotonic() < max(t0 + at, ready):
            time.sleep(0.1)
        fault = Fault(name, time.monotonic())
        log(f"fault: {name}")
        try:
            actions[name]()
        except Exception as exc:
            log(f"fault {name} failed: {exc!r}")
        fault.back = time.monotonic()
        faults.append(fault)
        log(f"fault: {name} done in {fault.back - fault.start:.1f} s")
        ready = fault.back + GAP
        load.deadline = max(load.deadline, ready)


def main() -> int:
    seconds = float(os.environ.get("SCALE_SECONDS", "90"))
    use_bouncer = os.environ.get("SCALE_PGBOUNCER", "1") != "0"  # DB_POOLER=pgbouncer
    out_file = Path(os.environ.get("SCALE_OUT", ROOT / "test-artifacts" / "scale-result.json"))
    root = Path(tempfile.mkdtemp(prefix="gpuproxy-scale-"))
    root.chmod(0o755)  # pgbouncer (as postgres) and nginx's workers read their files here
    log(f"working folder {root}; {seconds:.0f} s of load; pgbouncer={use_bouncer}")
    daemons: list[Daemon] = []
    loads: list[float] = []
    try:
        with running_cluster(durable=True) as cluster:
            cluster.create_database("scale")
            redis = redis_daemon(root)
            redis.start()
            daemons.append(redis)
            wait_redis(redis)
            bouncer = pgbouncer_daemon(root, cluster) if use_bouncer else None
            if bouncer is not None:
                bouncer.start()
                daemons.append(bouncer)
                wait_port(bouncer)
            upstream_port = free_port()
            vast = ScaleVast(upstream_port)
            with vast.serve() as vast_url:
                env = replica_env(cluster, bouncer, redis, vast_url)
                direct = {**env, "DB_HOST": cluster.host, "DB_PORT": str(cluster.port)}
                direct.pop("DB_POOLER", None)
                settings = load_settings({**direct, "DATA_DIR": str(root / "data")}, env_file=None)
                seeded = seed(settings)
                replicas = [replica_daemon(root, i, env) for i in range(REPLICAS)]
                nginx = nginx_daemon(root, [r.port for r in replicas], upstream_port)
                for d in [*replicas, nginx]:
                    d.start()
                    daemons.append(d)
                urls = [f"http://127.0.0.1:{r.port}" for r in replicas]
                for u in urls:
                    wait_http(f"{u}/health")
                front = f"http://127.0.0.1:{nginx.port}"
                wait_http(f"{front}/health")
                log(f"stack up: nginx {front}, replicas {urls}")
                first = rent_first(front, seeded["payers"])
                monitor = Monitor(front, urls, seeded["probe_key"], cluster.dsn("scale"))
                watcher = threading.Thread(target=monitor.watch_positions, daemon=True)
                watcher.start()
                faults: list[Fault] = []

                def kill_replica() -> None:
                    replicas[1].kill()
                    time.sleep(2)
                    replicas[1].start()
                    wait_http(f"{urls[1]}/health")

                def restart_redis() -> None:
                    redis.stop()
                    redis.start()
                    wait_redis(redis)

                def restart_bouncer() -> None:
                    assert bouncer is not None
                    bouncer.stop()
                    bouncer.start()
                    wait_port(bouncer)

                actions = {
                    "SIGKILL replica1 + restart": kill_replica,
                    "restart Redis": restart_redis,
                    "restart PostgreSQL (-m fast)": lambda: restart_postgres(cluster),
                }
                if bouncer is not None:
                    actions["restart PgBouncer"] = restart_bouncer
                step = seconds / (len(actions) + 1)
                plan = [(step * (i + 0.6), name) for i, name in enumerate(actions)]
                t0 = time.monotonic()
                load = Load(
                    nginx=front,
                    replicas=urls,
                    admin_key=seeded["admin_key"],
                    payers=seeded["payers"],
                    rate_key=seeded["rate_key"],
                    offers=list(OFFERS)[len(first) :],
                    deadline=t0 + seconds,
                )
                chaos = threading.Thread(target=run_faults, args=(faults, plan, t0, actions, load))
                chaos.start()

                async def drive() -> None:
                    prober = asyncio.create_task(monitor.probe())
                    sampler = asyncio.create_task(sample_load(loads, load))
                    await load.run(first)
                    await asyncio.sleep(3)
                    monitor.stop = True
                    await prober
                    await sampler

                asyncio.run(drive())
                chaos.join()
                load_seconds = time.monotonic() - t0
                for f in faults:
                    monitor.settle(f)
                log("load done; waiting for the read models and the last metering")
                wait_caught_up(urls)
                time.sleep(METERING_INTERVAL * 2)
                recovered_after = wait_leases_recovered(redis)
                for r in replicas:  # graceful: leases captured and released
                    r.stop()
                verify = subprocess.run(
                    [str(ROOT / ".venv/bin/aiserve-gpuproxy-admin"), "verify-projections"],
                    env={**os.environ, **direct, "DATA_DIR": str(root / "data")},
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                result = evaluate(settings, load, faults, seeded, first, verify, loads)
                result["load_seconds"] = round(load_seconds, 1)
                result["pgbouncer"] = use_bouncer
                result["proxy_fees"]["dead_leases_recovered_after_s"] = recovered_after
                result["logs"] = str(root)
    finally:
        for d in reversed(daemons):
            d.stop(timeout=15)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2, default=str))
    summary = {k: v for k, v in result.items() if k not in {"metering", "rate_limit", "money"}}
    print(json.dumps(summary, indent=2, default=str))
    for name in result["ok"]:
        log(f"{name}: {'PASS' if result['ok'][name] else 'FAIL'}")
    log(f"full result in {out_file}")
    return 0 if all(result["ok"].values()) else 1


def wait_leases_recovered(redis: Daemon, timeout: float = 90.0) -> float:
    """Seconds until no proxy lease of a dead process is left in Redis's fee tally (the
    elected hold sweep captured and released them: docs/adr/0029); -1 if never."""
    import redis as redis_client

    from infrastructure.proxy.fee_tally import RedisFeeTally

    tally = RedisFeeTally(redis_client.Redis(port=redis.port, socket_timeout=5))
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            entries = tally.entries()
            alive = tally.alive({e.process_id for e in entries})
            if all(e.process_id in alive for e in entries):
                return round(time.monotonic() - start, 1)
            time.sleep(1)
        return -1.0
    finally:
        tally.client.close()


def rent_first(front: str, payers: list[tuple[str, str]]) -> dict[str, str]:
    """One long-lived rental per payer (the pool the proxied requests go to), running."""
    first: dict[str, str] = {}
    with httpx.Client(base_url=front, timeout=30) as client:
        for n, (user_id, key) in enumerate(payers):
            answer = client.post(
                f"/api/v1/gpu/instances/vast.ai/{OFFERS[n]}",
                json={"image": "scale/ping:1", "ports": [8000]},
                headers={"X-API-Key": key, "Idempotency-Key": f"first-{n}"},
            )
            if answer.status_code != 201:
                raise RuntimeError(f"rent {OFFERS[n]}: {answer.status_code} {answer.text[:500]}")
            first[answer.json()["instance"]["id"]] = user_id
        deadline = time.monotonic() + 60
        keys = dict(payers)
        for instance_id, user_id in first.items():
            while True:
                got = client.get(
                    f"/api/v1/gpu/instances/vast.ai/{instance_id}",
                    headers={"X-API-Key": keys[user_id]},
                )
                if got.status_code == 200 and got.json()["instance"]["state"] == "running":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{instance_id} never ran: {got.text[:300]}")
                time.sleep(0.3)
    return first


async def sample_load(loads: list[float], load: Load) -> None:
    while load.running():
        loads.append(os.getloadavg()[0])
        await asyncio.sleep(5)


def wait_caught_up(urls: list[str], timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if all(httpx.get(f"{u}/ready", timeout=2).status_code == 200 for u in urls):
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return -1.0


def evaluate(
    settings: Settings,
    load: Load,
    faults: list[Fault],
    seeded: dict[str, Any],
    first: dict[str, str],
    verify: subprocess.CompletedProcess[str],
    loads: list[float],
) -> dict[str, Any]:
    users = {f"payer{i}": uid for i, (uid, _) in enumerate(seeded["payers"])}
    c = bootstrap(dataclasses.replace(settings))
    try:
        money_ok, money = checks.check_money(c, load.state, users)
        rentals = {**first, **load.state.rentals}
        metering_ok, metering = checks.check_metering(c, METERING_INTERVAL, rentals, faults)
        fees_ok, fees = checks.check_proxy_fees(c, load.state.records, PROXY_PRICE, faults)
    finally:
        c.close()
    rate_ok, rate = checks.check_rate_limit(
        load.state.records, RATE_LIMIT, [f for f in faults if "Redis" in f.name]
    )
    errors_ok, errors = checks.check_errors(load.state.records, faults)
    projections = {
        "verify_projections_exit": verify.returncode,
        "verify_projections_output": (verify.stdout + verify.stderr)[-1500:],
    }
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "load_average_1min": {
            "min": min(loads, default=0.0),
            "max": max(loads, default=0.0),
            "mean": round(sum(loads) / max(1, len(loads)), 2),
        },
        "ok": {
            "money": money_ok,
            "proxy_fees": fees_ok,
            "metering": metering_ok,
            "rate_limit": rate_ok,
            "errors": errors_ok,
            "projections": verify.returncode == 0,
        },
        "rentals": len(rentals),
        "destroyed": len(load.state.destroyed) + 0,
        "ws_connects": load.state.ws_connects,
        "ws_messages": load.state.ws_messages,
        "errors": errors,
        "projections": projections,
        "money": money,
        "proxy_fees": fees,
        "metering": metering,
        "rate_limit": rate,
    }


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    sys.exit(main())
