"""The ledger's event table split into a hot and an archive partition (PostgreSQL; ADR 0027).

``partition_event_table`` turns ``ledger_events`` (as the library creates it, empty or not)
into a table partitioned by ``LIST (archived)``: the existing table becomes the ``false``
partition ``ledger_events_hot`` by renaming it (no copy: its rows, primary key, notification
index and sequence stay as they are; the new ``archived`` column has a constant default, so
adding it does not rewrite the table), and ``ledger_events_archive`` (``true``) is itself
partitioned by ``RANGE (notification_id)``, one partition per archived slice of the log.
Every insert goes to the hot partition, whose primary key ``(originator_id,
originator_version)`` keeps detecting concurrent writers exactly as before.

``archive_range`` moves a slice of the log to the archive, keeping every stream's newest
``keep`` events hot: a writer only ever appends after a stream's head, so with the newest
events of each stream still under the hot primary key, a conflicting append is still
refused. Archived events stay readable through ``ledger_events`` (audit, time travel,
statements and rebuilds read them); an archive partition can be moved to a cheaper
tablespace, or detached and dumped, without touching the hot data (docs/retention.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from infrastructure.db.sql import Database

EVENTS = "ledger_events"
HOT = "ledger_events_hot"
ARCHIVE = "ledger_events_archive"
KEEP_VERSIONS = 1_000  # each stream's newest events never leave the hot partition


def is_partitioned(db: Database) -> bool:
    with db.transaction() as tx:
        row = tx.fetchone("SELECT relkind FROM pg_class WHERE oid = to_regclass(?)", (EVENTS,))
    return row is not None and row[0] == "p"


def partition_event_table(db: Database) -> bool:
    """Convert ``ledger_events`` in one transaction; False if it already is partitioned.

    Run it with the service stopped (it takes an exclusive lock); on a large table the only
    pass over the data is the check that the hot partition holds no archived rows.
    """
    if db.dialect != "postgres":
        raise RuntimeError("event table partitioning needs PostgreSQL")
    with db.transaction() as tx:
        row = tx.fetchone("SELECT relkind FROM pg_class WHERE oid = to_regclass(?)", (EVENTS,))
        if row is None:
            raise RuntimeError(f"{EVENTS} does not exist yet: start the service once first")
        if row[0] == "p":
            return False
        tx.execute(f"LOCK TABLE {EVENTS} IN ACCESS EXCLUSIVE MODE")
        tx.execute(f"ALTER TABLE {EVENTS} RENAME TO {HOT}")
        tx.execute(f"ALTER TABLE {HOT} ADD COLUMN archived boolean NOT NULL DEFAULT false")
        tx.execute(f"ALTER TABLE {HOT} ADD CONSTRAINT {HOT}_only_hot CHECK (NOT archived)")
        tx.execute(
            f"CREATE TABLE {EVENTS} (LIKE {HOT} INCLUDING DEFAULTS) PARTITION BY LIST (archived)"
        )
        tx.execute(f"ALTER TABLE {EVENTS} ATTACH PARTITION {HOT} FOR VALUES IN (false)")
        tx.execute(
            f"CREATE TABLE {ARCHIVE} PARTITION OF {EVENTS} FOR VALUES IN (true)"
            " PARTITION BY RANGE (notification_id)"
        )
        # the archive is read by stream (time travel, audit) and by position (rebuilds)
        tx.execute(
            f"CREATE INDEX {ARCHIVE}_stream ON {ARCHIVE} (originator_id, originator_version)"
        )
        tx.execute(f"CREATE INDEX {ARCHIVE}_position ON {ARCHIVE} (notification_id)")
        # the sequence belongs to the table that owns inserts' defaults now
        tx.execute(f"ALTER SEQUENCE {EVENTS}_notification_id_seq OWNED BY {EVENTS}.notification_id")
    return True


@dataclass(frozen=True)
class Archived:
    partition: str
    moved: int


def archive_range(db: Database, start: int, stop: int, keep: int = KEEP_VERSIONS) -> Archived:
    """Move the events with ``start <= notification_id < stop`` to a new archive partition,
    except each stream's newest ``keep`` events (they stay hot, under the primary key)."""
    if not 0 < start < stop:
        raise ValueError("need 0 < start < stop")
    name = f"{ARCHIVE}_{start}_{stop}"
    with db.transaction() as tx:
        tx.execute(
            f"CREATE TABLE {name} PARTITION OF {ARCHIVE} FOR VALUES FROM ({start}) TO ({stop})"
        )
        moved = tx.execute(
            f"UPDATE {EVENTS} AS e SET archived = true"
            f" FROM (SELECT originator_id, max(originator_version) AS head FROM {HOT}"
            "        GROUP BY originator_id) AS h"
            " WHERE NOT e.archived AND e.notification_id >= ? AND e.notification_id < ?"
            " AND h.originator_id = e.originator_id AND e.originator_version <= h.head - ?",
            (start, stop, keep),
        )
    return Archived(name, moved)
