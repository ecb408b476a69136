"""Admin CLI commands for read models: rebuild, verify, stats."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from interfaces.cli.admin.base import _container, _settle, console
from interfaces.cli.common import fail, print_json, usd
from interfaces.cli.output import money, print_table, to_terminal


def cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from infrastructure.readmodels.rebuild import rebuild
    from projections.ledger import ALL, BY_NAME

    if args.name and args.name not in BY_NAME:
        fail(f"unknown projection {args.name!r}; expected one of {', '.join(BY_NAME)}", 2)
    targets = [BY_NAME[args.name]] if args.name else list(ALL)
    c = _container(args)
    try:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10} ev/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True)) as progress:
            names = ", ".join(p.name for p in targets)
            task = progress.add_task(names, total=max(1, c.events.head()), rate="-")
            started = datetime.now(UTC)

            def report(position: int, head: int, count: int) -> None:
                elapsed = max((datetime.now(UTC) - started).total_seconds(), 1e-6)
                progress.update(
                    task,
                    completed=position,
                    total=max(head, position),
                    rate=f"{count / elapsed:,.0f}",
                )

            results = rebuild(c.db, c.events, targets, progress=report, method=args.method)
            end = max((r.position for r in results), default=0)
            progress.update(task, completed=end, total=max(end, 1))
        seconds = max((datetime.now(UTC) - started).total_seconds(), 1e-6)
        if args.json:
            print_json({"projections": [asdict(r) for r in results], "seconds": seconds})
            return 0
        for result in results:
            console.print(
                f"{result.name}: generation {result.old_generation} -> "
                f"{result.new_generation}, {result.events} events, at position {result.position}"
            )
        events = max((r.events for r in results), default=0)
        console.print(
            f"rebuilt {len(results)} projection(s) from {events:,} events in {seconds:.1f} s "
            f"({events / seconds:,.0f} events/s)"
        )
    finally:
        c.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from infrastructure.readmodels.rebuild import verify
    from projections.ledger import ALL, BY_NAME

    if args.name and args.name not in BY_NAME:
        fail(f"unknown projection {args.name!r}; expected one of {', '.join(BY_NAME)}", 2)
    targets = [BY_NAME[args.name]] if args.name else list(ALL)
    c = _container(args)
    try:
        results = verify(c.db, c.events, targets, method=args.method)
    finally:
        _settle(c)
    ok = all(r.ok for r in results)
    if args.json:
        print_json([{**asdict(r), "ok": r.ok} for r in results])
    else:
        cut = 16 if to_terminal() else None  # whole fingerprints in pipes and files
        for r in results:
            status = "OK" if r.ok else "MISMATCH"
            print(
                f"{r.name:<13} {status:<8} position {r.position:<10} rows {r.rows:<8} "
                f"live {r.live[:cut]} rebuilt {r.rebuilt[:cut]}"
            )
    return 0 if ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        c.runner.catch_up()
        totals = c.queries.totals()
        stats = {
            "users": c.users.count(),
            "events": c.events.head(),
            "accounts": totals["accounts"],
            "balance_total": usd(totals["balance"]),
            "held_total": usd(totals["held"]),
            "granted_total": usd(totals["granted"]),
            "charged_total": usd(totals["charged"]),
            "transactions": totals["transactions"],
            "projections": {
                name: {"position": pos, "lag": c.events.head() - pos}
                for name, pos in c.runner.positions().items()
            },
        }
    finally:
        _settle(c)
    if args.json:
        print_json(stats)
        return 0
    table = Table("metric", "value", title="GPU Proxy ledger")
    for key, value in stats.items():
        if key != "projections":
            table.add_row(key, money(value) if key.endswith("_total") else str(value))
    for name, p in stats["projections"].items():
        table.add_row(f"projection {name}", f"position {p['position']}, lag {p['lag']}")
    print_table(table)
    return 0
