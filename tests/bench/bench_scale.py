"""The ledger at scale (issue 24): how its costs grow from 200,000 to 10,000,000 events.

One throwaway PostgreSQL cluster with ``fsync=on`` holds one database per size. For each size
a realistic log is generated (``scale_log``: whales with 1,000,000 events, a reference account
with 1,000, a long tail) and loaded with binary ``COPY``; then, side by side:

1. ``rebuild``: ``aiserve-gpuproxy-admin rebuild-projections --json`` in a child process (its
   wall time, µs per event, peak RSS and CPU of that process from ``wait4``), then
   ``verify-projections --json`` the same way. The per-event cost of the largest size is
   compared with the smallest's.
2. ``time travel`` on the largest size: ``LedgerService.account_at`` at random instants and the
   first page (50 events) of ``history`` from the start and from a random instant, whale vs
   reference account, interleaved; ``build_statement`` for one month of each.
3. ``charges``: durable charges (32 threads, fresh accounts, the group committer) on an empty
   database vs the largest one, alternating rounds.
4. ``storage``: bytes per event of ``ledger_events`` (heap, TOAST, indexes), snapshots, the
   idempotency key table (rows kept after the 72 h prune vs keyed events written).

Run: ``python -m tests.bench.bench_scale`` (sizes 200,000 and 10,000,000; ``--sizes``).
Results: a table on stdout, JSON in ``bench-results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.statement_view import build_statement
from tests.bench.bench_ledger import bench_group_commit, open_accounts, server_facts
from tests.bench.harness import describe, loadavg, machine_facts
from tests.bench.scale_log import REFERENCE_USER, START, Counts, Shape, generate, whale_user
from tests.support.pg import Cluster, env_of, running_cluster

AIMS = {"rebuild_growth": 1.2, "time_travel": 1.5, "charges": 0.9}
ROOT = Path(__file__).resolve().parents[2]
console = Console(stderr=True)


def settings_for(cluster: Cluster, dbname: str) -> Settings:
    cluster.create_database(dbname)
    return load_settings(cluster.env(dbname), env_file=None)


def open_container(settings: Settings) -> Container:
    return bootstrap(settings, migrate=True)


def load(cluster: Cluster, dbname: str, shape: Shape) -> tuple[Settings, Counts, float]:
    """A fresh database with ``shape``'s log, read models empty (as after a restore)."""
    settings = settings_for(cluster, dbname)
    container = open_container(settings)  # migrations and the event store's tables
    columns = (
        TextColumn(f"generate {shape.events:,}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    started = time.perf_counter()
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("generate", total=shape.events)
            counts = generate(
                container.app,
                cluster.dsn(dbname),
                shape,
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        container.close()
    return settings, counts, time.perf_counter() - started


def admin(settings: Settings, *args: str) -> dict[str, Any]:
    """Run ``aiserve-gpuproxy-admin ARGS --json`` in a child; its output, time and peak RSS
    (``wait4`` gives that child's own resource usage)."""
    env = {**os.environ, **env_of(settings), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli.admin", *args, "--json"],
            env=env,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"admin {args} exited {child.returncode}: {err.read()[-2000:]}")
        output = json.loads(out.read())
    return {
        "s": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "output": output,
    }


def storage(dsn: str, events: int, counts: Counts) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:

        def one(sql: str, *params: Any) -> Any:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

        table = {
            "heap_bytes": one("SELECT pg_relation_size('ledger_events')"),
            "toast_bytes": one(
                "SELECT coalesce(pg_total_relation_size(reltoastrelid), 0) FROM pg_class"
                " WHERE oid = 'ledger_events'::regclass"
            ),
            "index_bytes": one("SELECT pg_indexes_size('ledger_events')"),
            "total_bytes": one("SELECT pg_total_relation_size('ledger_events')"),
            "avg_state_bytes": one("SELECT avg(length(state))::int FROM ledger_events"),
        }
        rows = one("SELECT count(*) FROM ledger_events")
        table["rows"] = rows
        table["bytes_per_event"] = round(table["total_bytes"] / max(1, rows), 1)
        snapshots = {
            "rows": one("SELECT count(*) FROM ledger_snapshots"),
            "total_bytes": one("SELECT pg_total_relation_size('ledger_snapshots')"),
        }
        keys = {
            "rows_kept": one("SELECT count(*) FROM ledger_idempotency"),
            "keyed_events_written": counts.keyed_events,
            "total_bytes": one("SELECT pg_total_relation_size('ledger_idempotency')"),
        }
        keys["bytes_per_row"] = round(keys["total_bytes"] / max(1, keys["rows_kept"]), 1)
        read_models = one(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            r" AND c.relname NOT LIKE 'ledger\_%%'"
        )
        database = one("SELECT pg_database_size(current_database())")
    return {
        "events": events,
        "ledger_events": table,
        "snapshots": snapshots,
        "idempotency_keys": keys,
        "other_tables_bytes": int(read_models or 0),
        "database_bytes": database,
    }


def measure_size(
    cluster: Cluster,
    shape: Shape,
    *,
    verify: bool,
    after_load: Callable[[Settings, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load, (``after_load``: reads that need no read model), rebuild, verify, storage."""
    dbname = f"scale_{shape.events}"
    settings, counts, load_s = load(cluster, dbname, shape)
    out: dict[str, Any] = {
        "shape": shape.__dict__,
        "events": counts.events,
        "account_events": counts.account_events,
        "by_kind": counts.by_name,
        "snapshots": counts.snapshots,
        "load_s": round(load_s, 1),
        "load_events_per_s": round(counts.events / load_s),
    }
    console.print(f"[{dbname}] loaded {counts.events:,} events in {load_s:.0f} s")
    out["storage"] = storage(cluster.dsn(dbname), counts.events, counts)
    if after_load is not None:
        after_load(settings, out)
    out["load_avg_before_rebuild"] = loadavg()
    rebuilt = admin(settings, "rebuild-projections")
    own = float(rebuilt["output"]["seconds"])  # the rebuild itself, without the CLI's start
    rebuilt["rebuild_s"] = round(own, 2)
    rebuilt["us_per_event"] = round(own / counts.events * 1e6, 2)
    rebuilt["events_per_s"] = round(counts.events / own)
    rebuilt["load_avg_after"] = loadavg()
    out["rebuild"] = rebuilt
    console.print(f"[{dbname}] rebuild {own:.1f} s ({rebuilt['us_per_event']} µs/event)")
    out["storage"]["after_rebuild_database_bytes"] = storage(
        cluster.dsn(dbname), counts.events, counts
    )["database_bytes"]
    out["dbname"] = dbname
    if verify:
        verify_size(settings, out)
    return out


def verify_size(settings: Settings, out: dict[str, Any]) -> None:
    """``verify-projections`` of one loaded and rebuilt size (into ``out["verify"]``)."""
    out["load_avg_before_verify"] = loadavg()
    checked = admin(settings, "verify-projections")
    checked["ok"] = all(r["ok"] for r in checked["output"])
    checked["us_per_event"] = round(checked["s"] / out["events"] * 1e6, 2)
    checked["load_avg_after"] = loadavg()
    out["verify"] = checked
    console.print(f"[{out['dbname']}] verify {checked['s']} s, ok={checked['ok']}")


def _timed_ms(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def time_travel(settings: Settings, shape: Shape, rounds: int) -> dict[str, Any]:
    """``balance --at`` and the first page of ``audit``: whale vs reference, interleaved."""
    container = open_container(settings)
    rng = random.Random(7)
    users = {"whale": whale_user(0), "reference": REFERENCE_USER}
    end = START + timedelta(days=shape.days)
    samples: dict[str, dict[str, list[float]]] = {
        k: {"balance_at": [], "audit_first_page": [], "audit_page_since": []} for k in users
    }
    out: dict[str, Any] = {"rounds": rounds}
    try:
        ledger = container.ledger
        for name, user in users.items():  # warm-up, and the versions the accounts reached
            ledger.account_at(user, end)
            view = ledger.account(user)
            out[f"{name}_events"] = view.version
        for _ in range(rounds):
            instant = START + (end - START) * rng.uniform(0.1, 1.0)
            for name, user in users.items():
                s = samples[name]
                s["balance_at"].append(_timed_ms(lambda u=user, t=instant: ledger.account_at(u, t)))
                s["audit_first_page"].append(_timed_ms(lambda u=user: ledger.history(u, limit=50)))
                s["audit_page_since"].append(
                    _timed_ms(lambda u=user, t=instant: ledger.history(u, since=t, limit=50))
                )
        for name in users:
            out[name] = {k: describe(v) for k, v in samples[name].items()}
        out["ratios"] = {
            k: round(out["whale"][k]["median_ms"] / out["reference"][k]["median_ms"], 3)
            for k in samples["whale"]
        }
        out["statement"] = statements(container, users)
    finally:
        container.close()
    return out


def statements(container: Container, users: dict[str, str]) -> dict[str, Any]:
    """``build_statement`` per account: February with nothing recorded (its hash chain from
    the first event), then January (recorded, as every ended month is), then March (its chain
    from February's recorded closing hash: the monthly routine)."""
    months = {
        "cold": (START + timedelta(days=45)).strftime("%Y-%m"),
        "month_before": START.strftime("%Y-%m"),
        "after_recorded_month": (START + timedelta(days=70)).strftime("%Y-%m"),
    }
    out: dict[str, Any] = {"months": months}
    for name, user in users.items():
        out[name] = {}
        for label, month in months.items():
            start = time.perf_counter()
            result = build_statement(container, user, month)
            out[name][label] = {
                "month": month,
                "s": round(time.perf_counter() - start, 3),
                "events_in_month": len(result.items),
                "reconciles": result.reconciles,
            }
            console.print(f"statement {name} {month} ({label}): {out[name][label]['s']} s")
    return out


def charges(
    cluster: Cluster, big: Settings, rounds: int, threads: int, seconds: float
) -> dict[str, Any]:
    """Durable charges on an empty store vs the largest one, fresh accounts, alternating."""
    empty = settings_for(cluster, "scale_empty")
    sides = {"empty": open_container(empty), "loaded": open_container(big)}
    runs: dict[str, list[dict[str, Any]]] = {"empty": [], "loaded": []}
    try:
        for round_no in range(rounds):
            for name, container in sides.items():
                users = [f"charge-{round_no}-{i}" for i in range(threads)]
                open_accounts(container.ledger, users)
                runs[name].append(
                    bench_group_commit(container.ledger, users, 1.0, seconds, f"r{round_no}-")
                )
    finally:
        for container in sides.values():
            container.close()

    def rate(name: str) -> float:
        seconds = float(sum(r["seconds"] for r in runs[name]))
        return float(sum(r["ops"] for r in runs[name])) / seconds

    return {
        "threads": threads,
        "window_s": seconds,
        "runs": runs,
        "empty_per_s": round(rate("empty"), 1),
        "loaded_per_s": round(rate("loaded"), 1),
        "ratio": round(rate("loaded") / rate("empty"), 3),
        "round_ratios": [
            round(b["ops_per_s"] / a["ops_per_s"], 3)
            for a, b in zip(runs["empty"], runs["loaded"], strict=True)
        ],
    }


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for size in results["sizes"]:
        r = size["rebuild"]
        rows.append(
            (
                f"rebuild {size['events']:,} events",
                f"{r['rebuild_s']} s, {r['us_per_event']} µs/event, "
                f"peak RSS {r['peak_rss_mib']} MiB",
                "",
            )
        )
        if "verify" in size:
            v = size["verify"]
            rows.append((f"verify {size['events']:,}", f"{v['s']} s ok={v['ok']}", ""))
        st = size["storage"]["ledger_events"]
        rows.append((f"storage {size['events']:,}", f"{st['bytes_per_event']} B/event", ""))
    if "rebuild_growth" in results:
        g = results["rebuild_growth"]
        rows.append(
            ("rebuild µs/event, largest / smallest", str(g), f"<= {AIMS['rebuild_growth']}")
        )
    if "time_travel" in results:
        for k, v in results["time_travel"]["ratios"].items():
            rows.append((f"{k} whale / reference", str(v), f"<= {AIMS['time_travel']}"))
    if "charges" in results:
        c = results["charges"]
        rows.append(
            (
                "charges loaded / empty",
                f"{c['ratio']} ({c['loaded_per_s']} vs {c['empty_per_s']}/s)",
                f">= {AIMS['charges']}",
            )
        )
    return rows


def save(results: dict[str, Any], path: str) -> Path:
    """Write the JSON so far (a long run keeps what it measured if it is stopped)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--sizes", default="200000,10000000", help="comma-separated event counts")
    p.add_argument("--no-verify", action="store_true", help="skip verify-projections")
    p.add_argument(
        "--verify-max",
        type=int,
        default=10**12,
        help="verify-projections only on sizes up to this many events",
    )
    p.add_argument("--whales", type=int, default=3, help="whales of the largest size")
    p.add_argument(
        "--whale-events", type=int, default=0, help="events of each whale of the largest size"
    )
    p.add_argument("--travel-rounds", type=int, default=40)
    p.add_argument("--charge-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--skip", default="", help="comma-separated: travel,charges")
    p.add_argument("--out", default=str(ROOT / "bench-results" / "scale.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": machine_facts(),
        "load_at_start": loadavg(),
        "sizes": [],
    }
    with running_cluster(durable=True) as cluster:
        results["server"] = server_facts(cluster)
        for events in sizes:
            shape = Shape.scaled(events)
            largest = events == sizes[-1]
            if largest and args.whale_events:
                shape = replace(shape, whales=args.whales, whale_events=args.whale_events)
            travel = None
            if largest and "travel" not in skip:  # first: it needs no read model

                def travel(settings: Settings, _: dict[str, Any], shape: Shape = shape) -> None:
                    results["time_travel"] = time_travel(settings, shape, args.travel_rounds)
                    save(results, args.out)

            verify = not args.no_verify and events <= args.verify_max and not largest
            results["sizes"].append(measure_size(cluster, shape, verify=verify, after_load=travel))
            save(results, args.out)
        first, last = results["sizes"][0], results["sizes"][-1]
        if len(sizes) > 1:
            results["rebuild_growth"] = round(
                last["rebuild"]["us_per_event"] / first["rebuild"]["us_per_event"], 3
            )
        big = load_settings(cluster.env(last["dbname"]), env_file=None)
        if "charges" not in skip:
            results["charges"] = charges(
                cluster, big, args.charge_rounds, args.threads, args.seconds
            )
            save(results, args.out)
        if not args.no_verify and sizes[-1] <= args.verify_max:  # the longest step: last
            verify_size(big, last)
            save(results, args.out)
    results["finished"] = datetime.now(UTC).isoformat()
    out = save(results, args.out)
    for label, value, aim in summary_rows(results):
        print(f"{label:<45} {value:<60} {aim}")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
