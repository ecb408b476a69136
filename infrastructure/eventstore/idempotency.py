"""The ledger's event-store recorders, with the idempotency key table (docs/adr/0016).

Each keyed money event's ``(account_id, key, fingerprint, minute)`` is inserted into
``<app>_idempotency`` in the same transaction as the events (``LedgerApp.save`` passes the rows
as ``idempotency_keys``; the recorders' ``_insert_events`` runs inside the save transaction on
both databases). The primary key ``(account_id, key)`` makes a second effect of one key
impossible even when every in-memory check missed it: the save fails with ``IntegrityError``
and the caller reloads and retries. ``CreditAccount`` keeps only its newest keys in its state
and asks ``idempotency_fingerprints`` for the others.

The table is created with the event store's own tables (``CREATE_TABLE``), not by a
migration: it must exist wherever ``ledger_events`` does (benchmarks and tools build the event
store without running migrations), and when it is first created, the keys of the events of the
last 72 h (+ a day) are copied into it in the same transaction, so an upgrade forgets none.
Rows older than 72 h are pruned every ``PRUNE_EVERY`` rows written, by the writing process,
on a background thread: older than the newest row written and than the database's clock, so
rows written by a clock far ahead cannot make the prune take keys still inside 72 h.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Identifier

from domain.credits import IDEMPOTENCY_RETENTION_MINUTES, CreditAccount, recorded_key

log = logging.getLogger(__name__)
KeyRow = tuple[UUID, str, str, int]  # account_id, key, fingerprint, minute
Pair = tuple[UUID, str]

PRUNE_EVERY = 20_000  # rows written between two prunes (per process)
BACKFILL_PAGE = 2_000
BACKFILL_SPAN = timedelta(minutes=IDEMPOTENCY_RETENTION_MINUTES) + timedelta(days=1)
LOOKUP_CHUNK = 400

_ACCOUNT_TOPIC = get_topic(CreditAccount) + "."
_decoder = msgspec.json.Decoder()


def keys_table_name(events_table_name: str) -> str:
    """``ledger_events`` -> ``ledger_idempotency`` (``stored_events`` on SQLite)."""
    return events_table_name.removesuffix("_events") + "_idempotency"


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and "_type_" in value and "_data_" in value:
        return value["_data_"]
    return value


def decode_key(
    originator_id: UUID | str, topic: str, state: bytes
) -> tuple[datetime, KeyRow | None]:
    """The event's timestamp, and the key row it records (None if it records no key)."""
    data = {k: _plain(v) for k, v in _decoder.decode(state).items()}
    timestamp = datetime.fromisoformat(data["timestamp"])
    if not topic.startswith(_ACCOUNT_TOPIC):
        return timestamp, None
    found = recorded_key(topic[len(_ACCOUNT_TOPIC) :], data)
    if found is None:
        return timestamp, None
    account = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
    return timestamp, (account, *found)


def backfill_rows(pages: Iterable[Sequence[tuple[Any, str, bytes]]]) -> list[KeyRow]:
    """Key rows of the newest events, pages newest first, until a page is older than 72 h + 1 d.

    ``pages`` yields ``(originator_id, topic, state)`` rows in descending notification order.
    Event timestamps follow notification order closely (the margin covers the skew).
    """
    rows: list[KeyRow] = []
    newest: datetime | None = None
    for page in pages:
        page_newest: datetime | None = None
        for originator_id, topic, state in page:
            timestamp, row = decode_key(originator_id, topic, bytes(state))
            newest = newest or timestamp
            page_newest = max(page_newest or timestamp, timestamp)
            if row is not None:
                rows.append(row)
        if newest is not None and page_newest is not None and page_newest < newest - BACKFILL_SPAN:
            break
    return rows


class _Pruning:
    """Counts rows written; every ``PRUNE_EVERY`` rows deletes those older than 72 h (relative
    to the newest row written) on a background thread, one prune at a time, so that the
    committer never waits for it."""

    def __init__(self, prune: Callable[[int], int]) -> None:
        self._prune = prune
        self._lock = threading.Lock()
        self._written = 0
        self._newest = 0
        self._running = False

    def wrote(self, rows: Sequence[KeyRow]) -> None:
        with self._lock:
            self._written += len(rows)
            self._newest = max(self._newest, *(r[3] for r in rows))
            if self._written < PRUNE_EVERY or self._running:
                return
            self._written, self._running = 0, True
            before = self._newest - IDEMPOTENCY_RETENTION_MINUTES
        threading.Thread(target=self._run, args=(before,), name="key-prune", daemon=True).start()

    def _run(self, before: int) -> None:
        try:
            self._prune(before)
        except Exception:  # the next prune retries; rows are only kept longer meanwhile
            log.warning("pruning the idempotency key table failed", exc_info=True)
        finally:
            with self._lock:
                self._running = False


class PostgresLedgerRecorder(PostgresApplicationRecorder):
    """PostgreSQL application recorder that also writes the ledger's idempotency key table."""

    records_idempotency_keys = True

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.keys_table_name = keys_table_name(events_table_name)
        self.check_identifier_length(self.keys_table_name)
        table = SQL("{}.{}").format(
            Identifier(self.datastore.schema), Identifier(self.keys_table_name)
        )
        self._sql_create_keys = [
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (account_id uuid NOT NULL, key text NOT NULL, "
                "fingerprint text NOT NULL, minute bigint NOT NULL, "
                "PRIMARY KEY (account_id, key))"
            ).format(table),
            SQL("CREATE INDEX IF NOT EXISTS {} ON {} (minute)").format(
                Identifier(self.keys_table_name + "_minute_idx"), table
            ),
        ]
        # Binary parameters: psycopg's text format escapes every array element with a regex.
        columns = "unnest(%b::uuid[], %b::text[], %b::text[], %b::bigint[])"
        self._sql_insert_keys = SQL("INSERT INTO {} SELECT * FROM " + columns).format(table)
        self._sql_backfill_keys = SQL(
            "INSERT INTO {} SELECT * FROM " + columns + " ON CONFLICT DO NOTHING"
        ).format(table)
        self._sql_select_keys = SQL(
            "SELECT account_id, key, fingerprint FROM {} "
            "JOIN unnest(%b::uuid[], %b::text[]) AS q (account_id, key) USING (account_id, key)"
        ).format(table)
        self._sql_prune_keys = SQL(
            "DELETE FROM {} WHERE minute < LEAST(%s, "
            "floor(extract(epoch FROM clock_timestamp()) / 60)::bigint - %s)"
        ).format(table)
        self._sql_insert_stored = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{}[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(
            Identifier(self.datastore.schema),
            Identifier(self.events_table_name),
            Identifier(self.datastore.originator_id_type),
        )
        self._sql_page = SQL(
            "SELECT notification_id, originator_id, topic, state FROM {}.{} "
            "WHERE notification_id < %s ORDER BY notification_id DESC LIMIT %s"
        ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        self._pruning = _Pruning(self.prune)

    # ------------------------------------------------------------ table

    def _events_table_partitioned(self) -> bool:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                (f"{self.datastore.schema}.{self.events_table_name}",),
            )
            row = curs.fetchone()
        return row is not None and row["relkind"] == "p"

    def create_table(self) -> None:
        if self._events_table_partitioned():
            # hot/archive partitions (infrastructure.eventstore.partitions): the table and its
            # indexes exist; the library's unique index statement is refused on a partitioned
            # table before its IF NOT EXISTS is looked at, so it is left out
            index = self.notification_id_index_name
            self.sql_create_statements = [
                s for s in self.sql_create_statements if index not in str(s.as_string(None))
            ]
        super().create_table()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "SELECT to_regclass(%s) AS found",
                (f"{self.datastore.schema}.{self.keys_table_name}",),
            )
            row = curs.fetchone()
            if row is not None and row["found"] is not None:
                return
            for statement in self._sql_create_keys:
                curs.execute(statement, prepare=False)
            rows = backfill_rows(self._pages(curs))
            if rows:
                curs.execute(self._sql_backfill_keys, _columns(rows), prepare=False)

    def _pages(self, curs: Cursor[DictRow]) -> Iterable[list[tuple[Any, str, bytes]]]:
        upper = 2**63 - 1
        while True:
            curs.execute(self._sql_page, (upper, BACKFILL_PAGE), prepare=False)
            page = curs.fetchall()
            if not page:
                return
            upper = page[-1]["notification_id"]
            yield [(r["originator_id"], r["topic"], r["state"]) for r in page]

    # ----------------------------------------------------------- writes

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
        rows: Sequence[KeyRow] = kwargs.get("idempotency_keys") or ()
        if rows:
            self._pruning.wrote(rows)
        return ids

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        rows: Sequence[KeyRow] = kwargs.get("idempotency_keys") or ()
        if rows:
            # Sorted: concurrent savers take the rows' unique-index locks in one order.
            curs.execute(self._sql_insert_keys, _columns(sorted(rows)), prepare=True)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        """The library's insert (table lock, NOTIFY, one INSERT returning the notification
        ids), with the events as four binary arrays instead of one text array of composites:
        psycopg escapes every ``bytea`` of the text form with a regex (~17 us per event)."""
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._sql_insert_stored,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
            prepare=True,
        )

    def prune(self, before_minute: int) -> int:
        """Delete key rows recorded before ``before_minute`` and more than 72 h before the
        database's clock; return how many."""
        with self.datastore.transaction(commit=True) as curs:
            params = (before_minute, IDEMPOTENCY_RETENTION_MINUTES)
            curs.execute(self._sql_prune_keys, params, prepare=False)
            return curs.rowcount

    # ------------------------------------------------------------ reads

    def idempotency_fingerprints(self, pairs: Sequence[Pair]) -> dict[Pair, str]:
        """The recorded fingerprint of each ``(account_id, key)`` that has one."""
        found: dict[Pair, str] = {}
        if not pairs:
            return found
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            for start in range(0, len(pairs), LOOKUP_CHUNK):
                chunk = pairs[start : start + LOOKUP_CHUNK]
                cur.execute(
                    self._sql_select_keys,
                    ([p[0] for p in chunk], [p[1] for p in chunk]),
                    prepare=True,
                )
                for account_id, key, fingerprint in cur.fetchall():
                    found[account_id, key] = fingerprint
        return found


class SQLiteLedgerRecorder(SQLiteApplicationRecorder):
    """SQLite application recorder that also writes the ledger's idempotency key table."""

    records_idempotency_keys = True

    def __init__(
        self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name)
        self.keys_table_name = table = keys_table_name(events_table_name)
        self._sql_create_keys = [
            f"CREATE TABLE IF NOT EXISTS {table} (account_id TEXT NOT NULL, key TEXT NOT NULL, "
            "fingerprint TEXT NOT NULL, minute INTEGER NOT NULL, "
            "PRIMARY KEY (account_id, key)) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {table}_minute_idx ON {table} (minute)",
        ]
        self._sql_insert_keys = f"INSERT INTO {table} VALUES (?, ?, ?, ?)"
        self._sql_backfill_keys = f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?, ?)"
        self._sql_prune_keys = (
            f"DELETE FROM {table} WHERE minute < "
            "MIN(?, CAST(strftime('%s', 'now') AS INTEGER) / 60 - ?)"
        )
        self._sql_page = (
            f"SELECT rowid, originator_id, topic, state FROM {events_table_name} "
            "WHERE rowid < ? ORDER BY rowid DESC LIMIT ?"
        )
        self._pruning = _Pruning(self.prune)

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (self.keys_table_name,),
            )
            if c.fetchone() is not None:
                return
            for statement in self._sql_create_keys:
                c.execute(statement)
            rows = backfill_rows(self._pages(c))
            c.executemany(self._sql_backfill_keys, [(r[0].hex, r[1], r[2], r[3]) for r in rows])

    def _pages(self, c: SQLiteCursor) -> Iterable[list[tuple[Any, str, bytes]]]:
        upper = 2**63 - 1
        while True:
            c.execute(self._sql_page, (upper, BACKFILL_PAGE))
            page = c.fetchall()
            if not page:
                return
            upper = page[-1][0]
            yield [(r[1], r[2], r[3]) for r in page]

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super().insert_events(stored_events, **kwargs)
        rows: Sequence[KeyRow] = kwargs.get("idempotency_keys") or ()
        if rows:
            self._pruning.wrote(rows)
        return ids

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        rows: Sequence[KeyRow] = kwargs.get("idempotency_keys") or ()
        if rows:
            c.executemany(self._sql_insert_keys, [(r[0].hex, r[1], r[2], r[3]) for r in rows])
        return returning

    def prune(self, before_minute: int) -> int:
        """Delete key rows recorded before ``before_minute`` and more than 72 h before the
        database's clock; return how many."""
        with self.datastore.transaction(commit=True) as c:
            c.execute(self._sql_prune_keys, (before_minute, IDEMPOTENCY_RETENTION_MINUTES))
            return int(c.sqlite_cursor.rowcount)

    def idempotency_fingerprints(self, pairs: Sequence[Pair]) -> dict[Pair, str]:
        """The recorded fingerprint of each ``(account_id, key)`` that has one."""
        found: dict[Pair, str] = {}
        if not pairs:
            return found
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(pairs), LOOKUP_CHUNK):
                chunk = pairs[start : start + LOOKUP_CHUNK]
                values = ", ".join(["(?, ?)"] * len(chunk))
                c.execute(
                    f"SELECT account_id, key, fingerprint FROM {self.keys_table_name} "
                    f"WHERE (account_id, key) IN (VALUES {values})",
                    [v for account_id, key in chunk for v in (account_id.hex, key)],
                )
                for account_id, key, fingerprint in c.fetchall():
                    found[UUID(account_id), key] = fingerprint
        return found


def _columns(rows: Sequence[KeyRow]) -> tuple[list[Any], ...]:
    return tuple([r[i] for r in rows] for i in range(4))
