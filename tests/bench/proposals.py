"""Copies of proposed, not yet applied, changes, measured by ``bench_ledger --proposals``.

Nothing here is used by the service. Each piece is the smallest copy of a change described in
docs/performance.md, so that its gain is measured on the same cluster, in the same run, next
to the code as it is (P1-P6 are applied; the plain path measures them):

- ``BackgroundSnapshotApp``: ``LedgerApp`` whose due snapshots (taken from the saved
  aggregates, as now) are encoded on the saving thread but written by a background thread,
  off the committer's critical path (a snapshot is a cache: losing one in a crash costs a
  longer replay, never data).
- ``fill_all(lean=..., bulk=...)``: the one-pass fill of
  ``infrastructure.readmodels.rebuild.fill`` with timings per stage, optionally with a lean
  read (tuple rows, only the needed columns, no library ``Notification`` objects) and
  set-based writes (COPY into a temporary table, then one ``INSERT ... SELECT ... ON
  CONFLICT`` per table and page). With both off it does what ``fill`` does, so its stage
  times decompose the current rebuild. ``pipeline=True`` writes
  each page's batches from a second thread while the next page is read and folded (the
  server's insert work, and psycopg's waits, overlap the Python fold; pages are still
  written in order, one transaction each).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Snapshot

from domain.services.ledger import LedgerApp
from infrastructure.db.sql import Database, Tx
from infrastructure.eventstore.event_log import EventLog
from infrastructure.readmodels.rebuild import CHUNK
from infrastructure.readmodels.store import (
    create_generation,
    drop_generation,
    physical,
    read_state,
    write_batch,
)
from projections.base import Batch, Projection, Recorded, Upsert

# ---------------------------------------------------------------- snapshots


class BackgroundSnapshotApp(LedgerApp):
    """Take and encode due snapshots on the saving thread (the aggregate's state is still the
    saved state there), write them from a background thread, coalesced."""

    name = "ledger"

    def __init__(self, env: Any = None) -> None:
        super().__init__(env=env)
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, daemon=True)
        self._writer.start()

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        if self.snapshots is None:
            return
        due: dict[UUID, Any] = {}
        for domain_event in processing_event.events:
            aggregate = processing_event.aggregates.get(domain_event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval and domain_event.originator_version % interval == 0:
                due[domain_event.originator_id] = aggregate
        if due:
            to_stored = self.snapshots.mapper.to_stored_event
            self._pending.put(
                [
                    to_stored(getattr(type(aggregate), "Snapshot", Snapshot).take(aggregate))
                    for aggregate in due.values()
                ]
            )

    def _write_loop(self) -> None:
        while True:
            stored = self._pending.get()
            if stored is None:
                return
            while True:  # coalesce whatever queued up meanwhile
                try:
                    more = self._pending.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._pending.put(None)
                    break
                stored.extend(more)
            assert self.snapshots is not None
            self.snapshots.recorder.insert_events(stored)

    def close(self) -> None:
        self._pending.put(None)
        self._writer.join(timeout=30)
        super().close()


# ------------------------------------------------------------------- rebuild

_decoder = msgspec.json.Decoder()
LEAN_SELECT = (
    "SELECT notification_id, originator_id, originator_version, topic, state"
    " FROM ledger_events WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
)


def lean_read(conn: Any, after: int, limit: int) -> list[Recorded]:
    """What ``EventLog.read`` returns, without the library's dict rows and Notification
    objects (no cipher/compressor: the ledger configures neither)."""
    rows = conn.execute(LEAN_SELECT, (after, limit), prepare=True).fetchall()
    out = []
    decode = _decoder.decode
    for position, originator_id, version, topic, state in rows:
        data = decode(state)
        for key, value in data.items():
            if value.__class__ is dict and "_type_" in value and "_data_" in value:
                data[key] = value["_data_"]
        out.append(Recorded(position, originator_id, version, topic.rpartition(":")[2], data))
    return out


def _bulk_upserts(
    tx: Tx,
    upserts: Sequence[Upsert],
    target: str,
    keys: Sequence[str],
    puts: Sequence[str],
    adds: Sequence[str],
    seq: list[int],
) -> None:
    """COPY coalesced upserts into a temporary table, then one set-based upsert (each key
    appears once per batch after coalescing, so ON CONFLICT never sees a key twice)."""
    columns = (*keys, *puts, *adds)
    seq[0] += 1
    stage = f"stage_{seq[0]}"
    conn = tx.conn  # type: ignore[attr-defined]
    conn.execute(
        f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS"
        f" SELECT {', '.join(columns)} FROM {target} LIMIT 0"
    )
    with conn.cursor() as cur, cur.copy(f"COPY {stage} ({', '.join(columns)}) FROM STDIN") as cp:
        for u in upserts:
            cp.write_row(
                (*(u.key[c] for c in keys), *(u.put[c] for c in puts), *(u.add[c] for c in adds))
            )
    updates = [f"{c} = excluded.{c}" for c in puts] + [
        f"{c} = {target}.{c} + excluded.{c}" for c in adds
    ]
    conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    conn.execute(
        f"INSERT INTO {target} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {stage}"
        f" ON CONFLICT ({', '.join(keys)}) {conflict}"
    )


def bulk_write(tx: Tx, batch: Batch, suffix: int | str, seq: list[int]) -> None:
    """``write_batch(tx, batch, suffix, bulk=True)`` with set-based upserts."""
    groups: dict[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], list[Any]] = {}
    for upsert in batch.upserts.values():
        signature = (
            upsert.table,
            tuple(upsert.key),
            tuple(sorted(upsert.put)),
            tuple(sorted(upsert.add)),
        )
        groups.setdefault(signature, []).append(upsert)
    for (table, keys, puts, adds), upserts in groups.items():
        _bulk_upserts(tx, upserts, physical(table, suffix), keys, puts, adds, seq)
    for table, rows in batch.inserts.items():
        columns = tuple(rows[0])
        tx.copy_rows(physical(table, suffix), columns, [tuple(r[c] for c in columns) for r in rows])


class PagedWriter:
    """Writes pages from one background thread, in order; the first error is re-raised to
    the producer (on its next ``put`` or at ``close``). At most one page waits queued."""

    def __init__(self, write: Callable[[list[Batch]], None]) -> None:
        self._write = write
        self._queue: queue.Queue[list[Batch] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="rebuild-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (batches := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(batches)
                except BaseException as exc:
                    self._error = exc

    def put(self, batches: list[Batch]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batches)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def fill_all(
    db: Database,
    events: EventLog,
    projections: Sequence[Projection],
    suffix: str,
    *,
    lean: bool,
    bulk: bool,
    pipeline: bool = False,
    chunk: int = CHUNK,
) -> tuple[int, dict[str, float]]:
    """Fold the whole log into ``*_g{suffix}`` of every projection in one pass, timing the
    stages: read (select + decode), fold (+ coalesce), write (+ commit; with ``pipeline``,
    the time the reading thread waited for the writer).

    Returns (events read, seconds per stage)."""
    stages = {"read": 0.0, "fold": 0.0, "write": 0.0}
    position, count, seq = 0, 0, [0]
    pool = db.pool  # type: ignore[attr-defined]

    def write(batches: list[Batch]) -> None:
        with db.transaction() as tx:
            for batch in batches:
                if not batch:
                    continue
                if bulk:
                    bulk_write(tx, batch, suffix, seq)
                else:
                    write_batch(tx, batch, suffix, bulk=True)

    writer = PagedWriter(write) if pipeline else None
    try:
        with pool.connection() as read_conn:
            while True:
                t0 = time.perf_counter()
                if lean:
                    page = lean_read(read_conn, position, chunk)
                else:
                    page = events.read(position, chunk)
                t1 = time.perf_counter()
                stages["read"] += t1 - t0
                if not page:
                    break
                batches = []
                for projection in projections:
                    batch = Batch()
                    fold, add = projection.fold, batch.add
                    for event in page:
                        add(fold(event))
                    batches.append(batch)
                t2 = time.perf_counter()
                stages["fold"] += t2 - t1
                if writer is None:
                    write(batches)
                else:
                    writer.put(batches)
                stages["write"] += time.perf_counter() - t2
                position = page[-1].position
                count += len(page)
    finally:
        if writer is not None:
            t3 = time.perf_counter()
            writer.close()
            stages["write"] += time.perf_counter() - t3
    return count, stages


def scratch_generation(db: Database, projections: Sequence[Projection], suffix: str) -> None:
    with db.transaction() as tx:
        for projection in projections:
            create_generation(tx, projection, read_state(tx, projection.name).generation, suffix)


def drop_scratch(db: Database, projections: Sequence[Projection], suffix: str) -> None:
    with db.transaction() as tx:
        for projection in projections:
            drop_generation(tx, projection, suffix)
