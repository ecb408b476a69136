"""Ledger benchmarks against the physical baseline, side by side, on a durable PostgreSQL.

Three measurements, each next to what the bare database does on the same machine in the
same run (a throwaway cluster with ``fsync=on`` and ``synchronous_commit=on``):

1. ``commands``: durable charges per second, 32 client threads on distinct accounts,
   each charge acknowledged only after its commit, through ``LedgerService.charge`` (the
   group committer) -- vs raw single-row autocommit INSERTs from 32 threads/connections.
   The library's plain path (get, charge, save per command) is measured for context.
2. ``rebuild``: what ``aiserve-gpuproxy-admin rebuild-projections`` does -- one
   ``rebuild(db, events, ALL)`` (all projections; on PostgreSQL the set-based SQL load,
   docs/adr/0015) -- in events per second, vs a raw paged ``SELECT`` of the notification
   log; the Python folds (``method="python"``, one pass over the log), each projection alone
   and the read path alone for context.
3. ``guardrail``: time of a guard-rail check (load the account from the event store, then
   check all 17 windows) on an account with a long history vs one with a short history.

Before each measurement (not with ``--quick``) it waits until the 1-minute load average is
below 1.0, at most 15 minutes in all (``--quiet-load``, ``--max-wait``, ``$BENCH_WAIT_UNTIL``),
and records the load average either way.

Run: ``python -m tests.bench.bench_ledger`` (about 4 minutes plus waiting) or ``--quick``
(under a minute); ``--proposals`` also measures the copies of the changes proposed but not
applied (``proposals.py``). Results: a table on stdout, JSON in ``bench-results/ledger.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

import infrastructure.readmodels.rebuild as rebuild_module
from domain.clocks import system_clock
from domain.credits import CreditAccount, account_id_for
from domain.guardrails import WINDOW_NAMES, GuardrailPolicy, env_name
from domain.services.ledger import LedgerApp, LedgerService
from infrastructure.eventstore.event_log import EventLog
from infrastructure.eventstore.factory import eventstore_env
from infrastructure.readmodels import rebuild_sql
from infrastructure.readmodels.rebuild import CHUNK, rebuild
from infrastructure.readmodels.store import checksum, read_state
from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import Container, bootstrap
from projections.ledger import ALL
from tests.bench import proposals
from tests.bench.harness import (
    Quiet,
    closed_loop,
    describe,
    loadavg,
    machine_facts,
    timings_ms,
)
from tests.conftest import FixedClock
from tests.support.pg import Cluster, running_cluster

AIMS = {"commands": 0.50, "rebuild": 0.40, "guardrail": 1.20}
CHARGE = 1_000  # micro-USD per charge
SEED_GRANT = 10**14
GUARDRAIL_LIMIT_USD = "100000"  # every window on, far above what the benchmark spends


# ---------------------------------------------------------------------- set-up


def guardrail_env() -> dict[str, str]:
    env = {"GUARDRAILS_ENABLED": "true"}
    env.update({env_name(window): GUARDRAIL_LIMIT_USD for window in WINDOW_NAMES})
    return env


def settings_for(cluster: Cluster, dbname: str) -> Settings:
    cluster.create_database(dbname)
    return load_settings({**cluster.env(dbname), **guardrail_env()}, env_file=None)


class BulkLedgerApp(LedgerApp):
    """The ledger's tables without automatic snapshots: only for pre-writing test data."""

    name = "ledger"  # same tables as LedgerApp (a subclass would default to its class name)
    snapshotting_intervals = {}  # noqa: RUF012 - overrides the parent's class variable


@contextlib.contextmanager
def container_for(settings: Settings, **kwargs: Any) -> Iterator[Container]:
    container = bootstrap(settings, **kwargs)
    try:
        yield container
    finally:
        container.close()


def server_facts(cluster: Cluster) -> dict[str, str]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        facts = {}
        for name in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
            "commit_delay",
        ):
            row = conn.execute(f"SHOW {name}").fetchone()
            facts[name] = str(row[0]) if row else ""
    return facts


def thread_cpu_s(thread: threading.Thread) -> float:
    """CPU time (user + system) one thread of this process used so far (Linux, tick-grained)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------- 1. commands


RAW_TABLE = (
    "CREATE TABLE raw_charges ("
    " id bigserial PRIMARY KEY, account text NOT NULL, amount bigint NOT NULL,"
    " key text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)
RAW_INSERT = "INSERT INTO raw_charges (account, amount, key) VALUES (%s, %s, %s)"


def create_raw_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_charges")
        conn.execute(RAW_TABLE)


def bench_raw_inserts(
    dsn: str, threads: int, warmup: float, seconds: float, tag: str = "raw"
) -> dict[str, Any]:
    """32 connections, each inserting one row per autocommit statement (one commit each)."""
    conns: dict[int, psycopg.Connection[Any]] = {}

    def make(index: int) -> Any:
        conn = psycopg.connect(dsn, autocommit=True)
        conns[index] = conn
        account = f"{tag}-{index}"

        def op(seq: int) -> None:
            conn.execute(RAW_INSERT, (account, CHARGE, f"{account}-{seq}"), prepare=True)

        return op

    result = closed_loop(
        threads, make, warmup=warmup, seconds=seconds, teardown=lambda i: conns[i].close()
    )
    return result.summary()


def open_accounts(ledger: LedgerService, users: list[str]) -> None:
    for user in users:
        ledger.grant(user, SEED_GRANT, key="seed")


def bench_group_commit(
    ledger: LedgerService, users: list[str], warmup: float, seconds: float, tag: str = "c"
) -> dict[str, Any]:
    """One client thread per account, each charge waits for its durable commit. Also the
    committer thread's CPU time per charge over the whole run (warm-up included)."""
    committer = ledger.committer
    committer._ensure_started()
    thread = committer._thread
    batches, commands, cpu = committer.batches, committer.commands, thread_cpu_s(thread)

    def make(index: int) -> Any:
        user = users[index]

        def op(seq: int) -> None:
            outcome = ledger.charge(user, CHARGE, key=f"{tag}{seq}")
            if not outcome.applied or outcome.position is None:
                raise RuntimeError(f"charge not applied: {outcome}")

        return op

    started = time.perf_counter()
    result = closed_loop(len(users), make, warmup=warmup, seconds=seconds)
    elapsed = time.perf_counter() - started
    summary = result.summary()
    done = committer.commands - commands
    used = thread_cpu_s(thread) - cpu
    summary["mean_batch"] = round(done / max(1, committer.batches - batches), 1)
    summary["committer_cpu_us_per_charge"] = round(used / max(1, done) * 1e6, 1)
    summary["committer_busy"] = round(used / elapsed, 3)
    return summary


def bench_plain_saves(
    app: LedgerApp, ledger: LedgerService, users: list[str], warmup: float, seconds: float
) -> dict[str, Any]:
    """The library's own path: get, charge, save -- one transaction per command."""
    policy = ledger.policy

    def make(index: int) -> Any:
        aggregate_id = account_id_for(users[index])

        def op(seq: int) -> None:
            account: CreditAccount = app.repository.get(aggregate_id)
            account.charge(CHARGE, key=f"p{seq}", now=system_clock(), policy=policy)
            app.save(account)

        return op

    return closed_loop(len(users), make, warmup=warmup, seconds=seconds).summary()


def _sum_rate(runs: list[dict[str, Any]]) -> float:
    return float(sum(r["ops"] for r in runs) / sum(r["seconds"] for r in runs))


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(sum(r[key] for r in runs)) / len(runs), 3)


def bench_commands(cluster: Cluster, args: argparse.Namespace, quiet: Quiet) -> dict[str, Any]:
    settings = settings_for(cluster, "bench_commands")
    dsn = cluster.dsn("bench_commands")
    threads, warmup, seconds = args.threads, args.warmup, args.seconds
    out: dict[str, Any] = {
        "threads": threads,
        "warmup_s": warmup,
        "window_s": seconds,
        "rounds": args.cmd_rounds,
        "guardrails": "on, all 17 windows",
    }
    create_raw_table(dsn)
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "ledger": [], "proposed": []}
    with container_for(settings) as container:
        ledger = container.ledger
        users = [f"gc-{i}" for i in range(threads)]
        open_accounts(ledger, users)
        proposed = None
        if args.proposals:
            app = proposals.BackgroundSnapshotApp(env=eventstore_env(settings))
            proposed = LedgerService(app, policy=settings.ledger.guardrails)
            prop_users = [f"prop-{i}" for i in range(threads)]
            open_accounts(proposed, prop_users)
        plain_users = [f"plain-{i}" for i in range(threads)]
        open_accounts(ledger, plain_users)
        with quiet.measure("commands", out):
            # Rounds of raw / ledger (/ proposed), so that the drift of a shared VM hits all.
            for round_no in range(args.cmd_rounds):
                runs["raw"].append(bench_raw_inserts(dsn, threads, warmup, seconds, f"r{round_no}"))
                runs["ledger"].append(
                    bench_group_commit(ledger, users, warmup, seconds, f"c{round_no}-")
                )
                if proposed is not None:
                    runs["proposed"].append(
                        bench_group_commit(proposed, prop_users, warmup, seconds, f"c{round_no}-")
                    )
            out["library_plain_save"] = bench_plain_saves(
                container.app, ledger, plain_users, warmup, min(seconds, 5.0)
            )
        if proposed is not None:
            proposed.close()
            proposed.app.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), avg(length(state))::int, max(length(state)) FROM ledger_snapshots"
        ).fetchone()
        keys = conn.execute("SELECT count(*) FROM ledger_idempotency").fetchone()
    if row:  # the state keeps only its newest idempotency keys (ADR 0016): bounded snapshots
        out["snapshots"] = {"count": row[0], "avg_bytes": row[1], "max_bytes": row[2]}
    if keys:  # every key of the last 72 h, in the event store's key table
        out["idempotency_rows"] = keys[0]
    out["runs"] = runs
    raw = _sum_rate(runs["raw"])
    out["raw_ops_per_s"] = round(raw, 1)
    out["ledger_ops_per_s"] = round(_sum_rate(runs["ledger"]), 1)
    out["ratio"] = round(out["ledger_ops_per_s"] / raw, 3)
    out["round_ratios"] = [
        round(led["ops_per_s"] / r["ops_per_s"], 3)
        for r, led in zip(runs["raw"], runs["ledger"], strict=True)
    ]
    out["mean_batch"] = _mean(runs["ledger"], "mean_batch")
    out["committer_cpu_us_per_charge"] = _mean(runs["ledger"], "committer_cpu_us_per_charge")
    out["committer_busy"] = _mean(runs["ledger"], "committer_busy")
    out["plain_ratio"] = round(out["library_plain_save"]["ops_per_s"] / raw, 3)
    if runs["proposed"]:
        out["proposed_ops_per_s"] = round(_sum_rate(runs["proposed"]), 1)
        out["proposed_ratio"] = round(out["proposed_ops_per_s"] / raw, 3)
        out["proposed_round_ratios"] = [
            round(p["ops_per_s"] / r["ops_per_s"], 3)
            for r, p in zip(runs["raw"], runs["proposed"], strict=True)
        ]
        out["proposed_committer_cpu_us_per_charge"] = _mean(
            runs["proposed"], "committer_cpu_us_per_charge"
        )
    return out


# -------------------------------------------------------------- 2. rebuild


def write_log(settings: Settings, events: int, accounts: int) -> int:
    """Pre-write about ``events`` events: grants and charges over ``accounts`` accounts,
    saved many aggregates per ``app.save``; business time 13 s apart, spread over days."""
    app = BulkLedgerApp(env=eventstore_env(settings))
    off = GuardrailPolicy()
    now = datetime(2026, 9, 1, tzinfo=UTC)
    step = timedelta(seconds=13)
    written = 0
    try:
        pool = []
        for index in range(accounts):
            account = CreditAccount(user_id=f"user-{index}", at=now)
            account.grant(SEED_GRANT, key="seed", now=now, source="payment")
            pool.append(account)
        app.save(*pool)
        written += 2 * accounts
        seq = 0
        while written < events:
            touched: dict[Any, CreditAccount] = {}
            for _ in range(min(5_000, events - written)):
                account = pool[seq % accounts]
                now += step
                if seq % 25 == 24:
                    account.grant(50_000_000, key=f"g{seq}", now=now, source="payment")
                else:
                    account.charge(
                        CHARGE + seq % 7_000,
                        key=f"c{seq}",
                        now=now,
                        policy=off,
                        reference=f"req-{seq}",
                    )
                touched[account.id] = account
                seq += 1
            written += len(app.save(*touched.values()))
    finally:
        app.close()
    return written


RAW_SELECT = (
    "SELECT * FROM ledger_events WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
)


def raw_read(dsn: str, page: int) -> tuple[int, float]:
    """Read the whole log with paged SELECTs, fetching every row, no decoding."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        start = time.perf_counter()
        last, rows, column = 0, 0, -1
        while True:
            cur.execute(RAW_SELECT, (last, page), prepare=True)
            batch = cur.fetchall()
            if not batch:
                break
            if column < 0:
                names = [d.name for d in cur.description or ()]
                column = names.index("notification_id")
            rows += len(batch)
            last = batch[-1][column]
        return rows, time.perf_counter() - start


def log_read(events: EventLog, page: int, *, decode: bool) -> tuple[int, float]:
    """The library's ``select_notifications`` alone, or ``EventLog.read`` (+ decoding)."""
    recorder = events.recorder
    start = time.perf_counter()
    last, rows = 0, 0
    while True:
        if decode:
            batch: Any = events.read(last, page)
            if not batch:
                break
            last = batch[-1].position
        else:
            batch = recorder.select_notifications(start=last, limit=page, inclusive_of_start=False)
            if not batch:
                break
            last = batch[-1].id
        rows += len(batch)
    return rows, time.perf_counter() - start


def lean_log_read(container: Container, page: int) -> tuple[int, float]:
    """``proposals.lean_read`` alone (tuple rows + decoding)."""
    pool = container.db.pool  # type: ignore[attr-defined]
    with pool.connection() as conn:
        start = time.perf_counter()
        last, rows = 0, 0
        while batch := proposals.lean_read(conn, last, page):
            last = batch[-1].position
            rows += len(batch)
        return rows, time.perf_counter() - start


@contextlib.contextmanager
def timing_fill(into: list[float]) -> Iterator[None]:
    """Time each ``infrastructure.readmodels.rebuild.fill`` / ``fill_sql`` call (the load of
    the fresh generation from the log) into ``into``."""
    originals = {"fill": rebuild_module.fill, "fill_sql": rebuild_module.fill_sql}

    def timer(original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - start)

        return timed

    for name, original in originals.items():
        setattr(rebuild_module, name, timer(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(rebuild_module, name, original)


def rebuild_checksums(db: Any) -> dict[str, tuple[str, int]]:
    """The live generation's checksum of every projection."""
    with db.snapshot() as tx:
        return {p.name: checksum(tx, p, read_state(tx, p.name).generation) for p in ALL}


def _rate(rows: int, secs: float) -> dict[str, Any]:
    return {"events": rows, "s": round(secs, 3), "per_s": round(rows / secs)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_rebuild(cluster: Cluster, args: argparse.Namespace, quiet: Quiet) -> dict[str, Any]:
    settings = settings_for(cluster, "bench_rebuild")
    dsn = cluster.dsn("bench_rebuild")
    out: dict[str, Any] = {"accounts": args.accounts, "projections": [p.name for p in ALL]}
    t0 = time.perf_counter()
    written = write_log(settings, args.events, args.accounts)
    out["events"] = written
    out["write_s"] = round(time.perf_counter() - t0, 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ledger_events")
        size = conn.execute("SELECT avg(length(state))::int FROM ledger_events").fetchone()
        out["avg_state_bytes"] = int(size[0]) if size else 0
    raw_read(dsn, 500)  # warm the caches once, untimed
    with container_for(settings) as container, quiet.measure("rebuild", out):
        db, events = container.db, container.events
        reads: dict[str, Any] = {"raw_select_500": _rate(*raw_read(dsn, 500))}
        # What `aiserve-gpuproxy-admin rebuild-projections` (no NAME) does: all projections,
        # by the method it picks (set-based SQL on PostgreSQL without cipher/compressor).
        out["method"] = "sql" if rebuild_sql.capable(db, events) else "python"
        fill_s: list[float] = []
        phases: list[float] = []
        last = [time.perf_counter()]

        def phase(*_: int) -> None:
            now = time.perf_counter()
            phases.append(round(now - last[0], 3))
            last[0] = now

        with timing_fill(fill_s):
            last[0] = time.perf_counter()
            reports, secs = _timed(lambda: rebuild(db, events, ALL, progress=phase))
        assert all(r.events == written for r in reports), reports
        by_method = rebuild_checksums(db)
        # fill = the load of the fresh generation; the rest is DDL, the tail under locks,
        # the switch.
        out["rebuild_all"] = {
            **_rate(written, secs),
            "fill_s": round(sum(fill_s), 3),
            "phases_s": phases,  # sql: extract, each projection, indexes, python-folded ones
        }
        # Context: the Python folds, one pass over the log (the reference verify uses).
        fill_s = []
        with timing_fill(fill_s):
            reports, secs = _timed(lambda: rebuild(db, events, ALL, method="python"))
        assert all(r.events == written for r in reports), reports
        out["rebuild_python"] = {**_rate(written, secs), "fill_s": round(sum(fill_s), 3)}
        out["same_rows_as_python"] = rebuild_checksums(db) == by_method
        per: dict[str, Any] = {}
        for projection in ALL:
            (report,), secs = _timed(partial(rebuild, db, events, [projection]))
            per[projection.name] = _rate(report.events, secs)
        out["rebuild_alone"] = per
        for label, page, decode in (
            ("library_select_500", 500, False),
            (f"library_select_{CHUNK}", CHUNK, False),
            (f"eventlog_read_{CHUNK}", CHUNK, True),
        ):
            reads[label] = _rate(*log_read(events, page, decode=decode))
        if args.proposals:
            reads[f"lean_read_{CHUNK}"] = _rate(*lean_log_read(container, CHUNK))
            out["proposed"] = proposed_fills(container, events)
        reads["raw_select_500_again"] = _rate(*raw_read(dsn, 500))  # after the writes
        out["reads"] = reads
    raw = max(reads["raw_select_500"]["per_s"], reads["raw_select_500_again"]["per_s"])
    out["raw_best_per_s"] = raw
    out["raw_us_per_event"] = round(1e6 / raw, 2)
    out["ratio"] = round(out["rebuild_all"]["per_s"] / raw, 3)
    out["us_per_event"] = round(1e6 / out["rebuild_all"]["per_s"], 2)
    out["python_ratio"] = round(out["rebuild_python"]["per_s"] / raw, 3)
    out["per_projection_ratio"] = {name: round(v["per_s"] / raw, 3) for name, v in per.items()}
    for variant in out.get("proposed", {}).values():
        variant["ratio"] = round(variant["per_s"] / raw, 3)
    return out


def proposed_fills(container: Container, events: EventLog) -> dict[str, Any]:
    """``proposals.fill_all`` into scratch tables: as ``fill`` does it today (stage times),
    with the lean read, lean read + set-based writes, a pipelined writer, all three; each
    checked row for row against what ``rebuild`` built."""
    db = container.db
    variants = {  # (lean read, set-based writes, pipelined writer)
        "current_stages": (False, False, False),
        "lean_read": (True, False, False),
        "lean_read_set_writes": (True, True, False),
        "pipelined": (False, False, True),
        "all_three": (True, True, True),
    }
    out: dict[str, Any] = {}
    for label, (lean, bulk, pipeline) in variants.items():
        proposals.scratch_generation(db, ALL, "bench")
        try:
            (count, stages), secs = _timed(
                partial(
                    proposals.fill_all,
                    *(db, events, ALL, "bench"),
                    lean=lean,
                    bulk=bulk,
                    pipeline=pipeline,
                )
            )
            same = {}
            with db.snapshot() as tx:
                for projection in ALL:
                    live = read_state(tx, projection.name).generation
                    same[projection.name] = checksum(tx, projection, "bench") == checksum(
                        tx, projection, live
                    )
        finally:
            proposals.drop_scratch(db, ALL, "bench")
        out[label] = {
            **_rate(count, secs),
            "stages_us_per_event": {k: round(v / count * 1e6, 2) for k, v in stages.items()},
            "same_rows_as_rebuild": same,
        }
    return out


# ------------------------------------------------------------ 3. guard rail


def write_history(
    app: LedgerApp, user_id: str, old: int, recent: int, now: datetime, save_every: int = 1_000
) -> CreditAccount:
    """One account with ``old`` events older than 72 h and ``recent`` events of the same
    shape in the last 72 h (so the state a check needs is the same size)."""
    off = GuardrailPolicy()
    boundary = now - timedelta(hours=73)
    opened = boundary - timedelta(minutes=old)
    account = CreditAccount(user_id=user_id, at=opened)
    account.grant(SEED_GRANT, key="seed", now=opened, source="payment")
    for i in range(old - 2):  # one event a minute, ending an hour before the 72 h window
        at = boundary - timedelta(minutes=old - 2 - i)
        account.charge(CHARGE + i % 500, key=f"old-{i}", now=at, policy=off, reference=f"r{i}")
        if len(account.pending_events) >= save_every:
            app.save(account)
    gap = (72 * 60 - 2) / recent
    for i in range(recent):  # the same recent activity on every account
        at = now - timedelta(minutes=72 * 60 - 1 - int(i * gap))
        if i % 50 == 49:
            account.grant(25_000_000, key=f"new-g{i}", now=at, source="payment")
        else:
            account.charge(CHARGE + i % 500, key=f"new-{i}", now=at, policy=off, reference=f"n{i}")
        if len(account.pending_events) >= save_every:
            app.save(account)
    app.save(account)
    return account


def bench_guardrail(cluster: Cluster, args: argparse.Namespace, quiet: Quiet) -> dict[str, Any]:
    settings = settings_for(cluster, "bench_guardrail")
    policy = settings.ledger.guardrails
    assert policy.enabled
    assert len(policy.effective_limits({})) == len(WINDOW_NAMES)
    clock = FixedClock(datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
    with container_for(settings, clock=clock) as container:
        app = container.app
        ledger = LedgerService(app, policy=policy, clock=clock)
        recent = args.recent
        sizes = {"long": args.history, "short": args.short_history}
        t0 = time.perf_counter()
        for name, total in sizes.items():
            account = write_history(app, f"guard-{name}", total - recent, recent, clock.now)
            assert account.version == total, (account.version, total)
        write_s = time.perf_counter() - t0
        with psycopg.connect(cluster.dsn("bench_guardrail"), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE ledger_events")
            conn.execute("VACUUM ANALYZE ledger_snapshots")
        results: dict[str, Any] = {"sizes": sizes, "recent_events": recent}
        results["write_s"] = round(write_s, 1)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"check_spend": [], "repository_get": [], "aggregate_check": []} for name in sizes
        }
        with quiet.measure("guardrail", results):
            for name in sizes:  # warm-up: caches, prepared statements
                for _ in range(20):
                    ledger.check_spend(f"guard-{name}", CHARGE)
            for _ in range(args.rounds):  # interleaved, so drift hits both alike
                for name in sizes:
                    user = f"guard-{name}"
                    aggregate_id = account_id_for(user)
                    s = samples[name]
                    s["check_spend"] += timings_ms(partial(ledger.check_spend, user, CHARGE), 5)
                    s["repository_get"] += timings_ms(partial(app.repository.get, aggregate_id), 5)
                    loaded: CreditAccount = app.repository.get(aggregate_id)
                    s["aggregate_check"] += timings_ms(
                        partial(loaded.check_spend, CHARGE, clock.now, policy), 5
                    )
        for name in sizes:
            account = app.repository.get(account_id_for(f"guard-{name}"))
            results[name] = {
                "events": account.version,
                "buckets": len(account.buckets),
                "keys": len(account.keys),
                **{k: describe(v) for k, v in samples[name].items()},
            }
        with psycopg.connect(cluster.dsn("bench_guardrail"), autocommit=True) as conn:
            for name in sizes:
                row = conn.execute(
                    "SELECT originator_version, length(state) FROM ledger_snapshots"
                    " WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1",
                    (account_id_for(f"guard-{name}"),),
                ).fetchone()
                results[name]["snapshot"] = {"version": row[0], "bytes": row[1]} if row else None
    long_ms = results["long"]["check_spend"]["median_ms"]
    short_ms = results["short"]["check_spend"]["median_ms"]
    results["ratio"] = round(long_ms / short_ms, 3)
    results["ratio_p95"] = round(
        results["long"]["check_spend"]["p95_ms"] / results["short"]["check_spend"]["p95_ms"], 3
    )
    return results


# -------------------------------------------------------------------- output


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def rebuild_method_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """The rebuild's phases and the Python folds' rate, for context."""
    rows: list[tuple[str, ...]] = []
    if r["rebuild_all"].get("phases_s"):
        phases = " ".join(f"{v:.2f}" for v in r["rebuild_all"]["phases_s"])
        rows.append(("  phases s (sql: extract, each, indexes, others)", phases, "", "", "", ""))
    if "rebuild_python" in r:
        rows.append(
            (
                "  context: Python folds, one pass (method=python)",
                f"{r['rebuild_python']['per_s']:,}",
                f"{r['raw_best_per_s']:,}",
                f"{r['python_ratio']:.2f}",
                "same rows" if r.get("same_rows_as_python") else "ROWS DIFFER",
                "",
            )
        )
    return rows


def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    c = results.get("commands")
    if c:
        raw = c["raw_ops_per_s"]
        rows.append(
            (
                f"durable charges/s, {c['threads']} threads, group commit",
                f"{c['ledger_ops_per_s']:,.0f}",
                f"{raw:,.0f}",
                f"{c['ratio']:.2f}",
                ">= 0.50",
                _met(c["ratio"] >= AIMS["commands"]),
            )
        )
        rows.append(
            ("  per round (ratio)", "", "", " ".join(f"{r:.2f}" for r in c["round_ratios"]), "", "")
        )
        rows.append(
            (
                "  committer: CPU us/charge, busy, mean batch",
                f"{c['committer_cpu_us_per_charge']:.0f} us, {c['committer_busy']:.0%}, "
                f"{c['mean_batch']:.1f}",
                "",
                "",
                "",
                "",
            )
        )
        if "proposed_ratio" in c:
            rows.append(
                (
                    "  proposed: background snapshot writer",
                    f"{c['proposed_ops_per_s']:,.0f}",
                    f"{raw:,.0f}",
                    f"{c['proposed_ratio']:.2f}",
                    ">= 0.50",
                    _met(c["proposed_ratio"] >= AIMS["commands"]),
                )
            )
        plain = c["library_plain_save"]
        rows.append(
            (
                "  context: get+charge+save per command",
                f"{plain['ops_per_s']:,.0f}",
                f"{raw:,.0f}",
                f"{c['plain_ratio']:.2f}",
                "",
                "",
            )
        )
        led, rr = c["runs"]["ledger"][-1], c["runs"]["raw"][-1]
        rows.append(
            (
                "  latency p50 / p99 ms (last round)",
                f"{led['p50_ms']:.1f} / {led['p99_ms']:.1f}",
                f"{rr['p50_ms']:.1f} / {rr['p99_ms']:.1f}",
                "",
                "",
                "",
            )
        )
    r = results.get("rebuild")
    if r:
        raw = r["raw_best_per_s"]
        rows.append(
            (
                f"rebuild-projections events/s, all {len(r['projections'])}, "
                f"{r.get('method', 'python')}, {r['events']:,} events",
                f"{r['rebuild_all']['per_s']:,}",
                f"{raw:,}",
                f"{r['ratio']:.2f}",
                ">= 0.40",
                _met(r["ratio"] >= AIMS["rebuild"]),
            )
        )
        fill_s = r["rebuild_all"].get("fill_s")
        if fill_s:
            rows.append(
                (
                    "  of which the load of the new generation (fill)",
                    f"{r['events'] / fill_s:,.0f}",
                    f"{raw:,}",
                    f"{r['events'] / fill_s / raw:.2f}",
                    f"{fill_s:.1f} of {r['rebuild_all']['s']:.1f} s",
                    "",
                )
            )
        rows.append(
            (
                "  us per event",
                f"{r['us_per_event']:.1f}",
                f"{r['raw_us_per_event']:.1f}",
                "",
                "",
                "",
            )
        )
        rows += rebuild_method_rows(r)
        for name, v in r["rebuild_alone"].items():
            rows.append(
                (
                    f"  rebuild {name} alone",
                    f"{v['per_s']:,}",
                    f"{raw:,}",
                    f"{r['per_projection_ratio'][name]:.2f}",
                    "",
                    "",
                )
            )
        for label, key in (
            ("  read only: library select_notifications", f"library_select_{CHUNK}"),
            ("  read only: EventLog.read (select + decode)", f"eventlog_read_{CHUNK}"),
            ("  read only: proposed lean read (+ decode)", f"lean_read_{CHUNK}"),
        ):
            v = r["reads"].get(key)
            if v:
                rows.append(
                    (label, f"{v['per_s']:,}", f"{raw:,}", f"{v['per_s'] / raw:.2f}", "", "")
                )
        for label, key in (
            ("  fill, as today: read / fold / write us/event", "current_stages"),
            ("  proposed: lean read", "lean_read"),
            ("  proposed: lean read + set-based writes", "lean_read_set_writes"),
            ("  proposed: pipelined writer (read+fold / write)", "pipelined"),
            ("  proposed: all three", "all_three"),
        ):
            v = r.get("proposed", {}).get(key)
            if v:
                st = v["stages_us_per_event"]
                same = all(v["same_rows_as_rebuild"].values())
                rows.append(
                    (
                        label,
                        f"{v['per_s']:,}",
                        f"{raw:,}",
                        f"{v['ratio']:.2f}",
                        f"{st['read']:.1f}/{st['fold']:.1f}/{st['write']:.1f} us",
                        "" if same else "ROWS DIFFER",
                    )
                )
    g = results.get("guardrail")
    if g:
        lo, sh = g["long"], g["short"]
        rows.append(
            (
                f"guard-rail check ms (median), {lo['events']:,} vs {sh['events']:,} events",
                f"{lo['check_spend']['median_ms']:.3f}",
                f"{sh['check_spend']['median_ms']:.3f}",
                f"{g['ratio']:.2f}",
                "<= 1.20",
                _met(g["ratio"] <= AIMS["guardrail"]),
            )
        )
        rows.append(
            (
                "  p95",
                f"{lo['check_spend']['p95_ms']:.3f}",
                f"{sh['check_spend']['p95_ms']:.3f}",
                f"{g['ratio_p95']:.2f}",
                "",
                "",
            )
        )
        for label, key in (
            ("  of which repository.get (median)", "repository_get"),
            ("  of which the 17-window check (median)", "aggregate_check"),
        ):
            long_ms, short_ms = lo[key]["median_ms"], sh[key]["median_ms"]
            rows.append(
                (label, f"{long_ms:.3f}", f"{short_ms:.3f}", f"{long_ms / short_ms:.2f}", "", "")
            )
    return rows


def print_table(results: dict[str, Any]) -> None:
    header = ("measure", "ledger", "baseline", "ratio", "aim", "met")
    rows = table_rows(results)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency; plain output otherwise
        for row in (header, *rows):
            print(" | ".join(row))
        return
    table = Table(title="Ledger vs physical baseline (durable PostgreSQL, same run)")
    for column in header:
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)
    for part in ("commands", "rebuild", "guardrail"):
        load = results.get(part, {}).get("load")
        if load:
            print(
                f"{part}: load average before wait {load['load_before_wait']}, waited "
                f"{load['waited_s']} s, at start {load['load_at_start']}, "
                f"at end {load.get('load_after')}"
            )


def markdown_table(results: dict[str, Any]) -> str:
    header = ("measure", "ledger", "baseline", "ratio", "aim", "met")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, short windows (< 1 min)")
    p.add_argument(
        "--only",
        choices=["commands", "rebuild", "guardrail"],
        action="append",
        help="run only these parts (repeatable)",
    )
    p.add_argument(
        "--proposals",
        action="store_true",
        help="also measure the proposed, not applied, changes (tests/bench/proposals.py)",
    )
    p.add_argument("--threads", type=int, default=32, help="client threads (commands)")
    p.add_argument("--seconds", type=float, default=None, help="measurement window per side")
    p.add_argument("--warmup", type=float, default=None, help="warm-up before each window")
    p.add_argument("--cmd-rounds", type=int, default=None, help="raw/ledger rounds (commands)")
    p.add_argument("--events", type=int, default=None, help="events in the log to rebuild")
    p.add_argument("--accounts", type=int, default=None, help="accounts in the rebuild log")
    p.add_argument("--history", type=int, default=None, help="events on the long account")
    p.add_argument("--short-history", type=int, default=1_000, help="events, short account")
    p.add_argument("--recent", type=int, default=500, help="events in the last 72 h, both")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of 5 checks")
    p.add_argument(
        "--quiet-load",
        type=float,
        default=1.0,
        help="wait for a 1-min load average below this before each part",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=900.0,
        help="seconds of waiting for a quiet machine, all parts together ($BENCH_WAIT_UNTIL "
        "overrides with an epoch deadline); --quick and --no-wait never wait",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument("--out", type=Path, default=Path("bench-results/ledger.json"))
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "seconds": 2.0 if quick else 8.0,
        "warmup": 0.5 if quick else 1.5,
        "cmd_rounds": 1 if quick else 3,
        "events": 20_000 if quick else 200_000,
        "accounts": 200 if quick else 2_000,
        "history": 10_000 if quick else 100_000,
        "rounds": 20 if quick else 100,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped with SIGTERM (or SIGINT while in the background): unwind, so that the
    # throwaway cluster is stopped and deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parts = args.only or ["commands", "rebuild", "guardrail"]
    quiet = Quiet.for_run(
        enabled=not (args.quick or args.no_wait), below=args.quiet_load, max_wait=args.max_wait
    )
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_facts(),
        "loadavg_start": loadavg(),
    }
    with running_cluster(durable=True) as cluster:
        results["postgres"] = server_facts(cluster)
        for part, fn in (
            ("commands", bench_commands),
            ("rebuild", bench_rebuild),
            ("guardrail", bench_guardrail),
        ):
            if part in parts:
                t0 = time.perf_counter()
                print(f"[{part}] setting up (load average {loadavg()}) ...", file=sys.stderr)
                results[part] = fn(cluster, args, quiet)
                print(
                    f"[{part}] done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True
                )
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    if args.markdown:
        print(markdown_table(results))
    print(f"JSON: {args.out}  (elapsed {results['elapsed_s']} s, load average {loadavg()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
