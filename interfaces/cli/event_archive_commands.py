"""``partition-events`` and ``archive-events``: the event log's hot/archive split (ADR 0027)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from interfaces.cli.common import fail, print_json


def _database(args: argparse.Namespace) -> Any:
    from infrastructure.settings import load_settings
    from interfaces.bootstrap import open_database

    settings = load_settings(env_file=args.env_file)
    if settings.db.type != "postgres":
        fail("the event log is partitioned on PostgreSQL only", 2)
    return open_database(settings)


def cmd_partition_events(args: argparse.Namespace) -> int:
    """Convert ``ledger_events`` into hot/archive partitions (service stopped; once)."""
    from infrastructure.eventstore.partitions import partition_event_table

    db = _database(args)
    try:
        converted = partition_event_table(db)
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        db.close()
    if args.json:
        print_json({"converted": converted})
    else:
        print("ledger_events is now partitioned" if converted else "already partitioned")
    return 0


def cmd_archive_events(args: argparse.Namespace) -> int:
    """Move log positions [START, STOP) to a new archive partition, streams' heads kept hot."""
    from infrastructure.eventstore.partitions import archive_range, is_partitioned

    db = _database(args)
    try:
        if not is_partitioned(db):
            fail("ledger_events is not partitioned; run partition-events first")
        if not 0 < args.start < args.stop:
            fail("need 0 < START < STOP", 2)
        done = archive_range(db, args.start, args.stop, args.keep)
    finally:
        db.close()
    if args.json:
        print_json({"partition": done.partition, "moved": done.moved})
    else:
        print(f"moved {done.moved} events to {done.partition}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    add("partition-events", cmd_partition_events, "split the event log into hot and archive")
    p = add("archive-events", cmd_archive_events, "move a range of the log to the archive")
    p.add_argument("start", type=int, help="first notification id to move")
    p.add_argument("stop", type=int, help="first notification id to keep")
    p.add_argument("--keep", type=int, default=1_000, help="newest events per stream kept hot")
