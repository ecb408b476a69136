"""Copies of proposed changes to non-bench files, measured by ``bench_ledger --proposals``.

Nothing here is used by the service. Each piece is the smallest copy of a change proposed in
docs/performance.md, so that its gain is measured on the same cluster, in the same run, next
to the code as it is:

- ``event_store_env``: ``POSTGRES_PRE_PING=n`` for the event store (one round trip less per
  pool checkout; the library already retries ``OperationalError``/``InterfaceError``).
- ``FastSaveApp``: ``save`` that recognises aggregates with a nominal ``isinstance`` check
  before the library's runtime-``Protocol`` checks (which cost ~28 us per aggregate).
- ``InMemorySnapshotApp``: snapshots taken from the aggregates just saved, all due snapshots
  of one save written in one transaction -- instead of the library's ``take_snapshot``, which
  re-reads each aggregate from the database (snapshot + up to 100 events) and writes each
  snapshot in its own transaction, on the committer's thread.
- ``BackgroundSnapshotApp``: the same, but the (already encoded) snapshots are written by a
  background thread, off the committer's critical path (a snapshot is a cache: losing one in
  a crash costs a longer replay, never data).
- ``LingerCommitter``: the group committer waits a little for stragglers before it runs a
  batch, so that 32 clients released by one commit ride the next commit together instead of
  alternating between a small and a large batch.
- ``fill_all``: one pass over the log for every projection (read and decode once), lean
  reads (tuple rows, only the needed columns) and set-based bulk writes (COPY into a
  temporary table, then one ``INSERT ... SELECT ... ON CONFLICT`` per table and chunk).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Recording

from domain.services.committer import _STOP, GroupCommitter
from domain.services.ledger import LedgerApp
from infrastructure.event_log import EventLog
from infrastructure.eventstore import eventstore_env
from infrastructure.projection_store import physical, read_state
from infrastructure.settings import Settings
from infrastructure.sql import Database, Tx
from projections.base import Batch, Projection, Recorded, Upsert

# ------------------------------------------------------------ event store env


def event_store_env(settings: Settings, *, pre_ping: bool) -> dict[str, str]:
    env = eventstore_env(settings)
    env["POSTGRES_PRE_PING"] = "y" if pre_ping else "n"
    return env


# ---------------------------------------------------------------- save


class FastSaveApp(LedgerApp):
    """``Application.save`` without the two runtime-``Protocol`` ``isinstance`` checks per
    aggregate in ``ProcessingEvent.collect_events`` (about 28 us per aggregate on this
    machine under Python 3.11): a nominal ``isinstance(obj, Aggregate)`` first."""

    name = "ledger"

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # deprecated hook, kept as the library does
        return recordings


# ---------------------------------------------------------------- snapshots


class InMemorySnapshotApp(FastSaveApp):
    """Snapshots from the saved aggregates, one transaction for all of a save's snapshots."""

    name = "ledger"

    def _due(self, processing_event: ProcessingEvent[UUID]) -> list[Any]:
        due: dict[UUID, Any] = {}
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval and event.originator_version % interval == 0:
                due[event.originator_id] = aggregate
        snapshots = []
        for aggregate in due.values():
            snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
            snapshots.append(snapshot_class.take(aggregate))
        return snapshots

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        if self.snapshots is None or not self.snapshotting_intervals:
            return
        snapshots = self._due(processing_event)
        if snapshots:
            self.snapshots.put(snapshots)


class BackgroundSnapshotApp(InMemorySnapshotApp):
    """Encode due snapshots on the saving thread (their state is still the saved state),
    write them from a background thread."""

    name = "ledger"

    def __init__(self, env: Any = None) -> None:
        super().__init__(env=env)
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, daemon=True)
        self._writer.start()

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        if self.snapshots is None or not self.snapshotting_intervals:
            return
        snapshots = self._due(processing_event)
        if snapshots:
            mapper = self.snapshots.mapper
            self._pending.put([mapper.to_stored_event(s) for s in snapshots])

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


# ------------------------------------------------------------------ committer


class LingerCommitter(GroupCommitter[Any]):
    """``GroupCommitter`` whose loop waits up to ``linger`` seconds (while items keep coming
    at most ``gap`` seconds apart) before it runs a batch."""

    def __init__(self, *args: Any, linger: float = 0.002, gap: float = 0.0003, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._linger = linger
        self._gap = gap

    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        batch, deadline = [first], time.perf_counter() + self._linger
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                wait = min(self._gap, deadline - time.perf_counter())
                if wait <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run(self) -> None:
        """``GroupCommitter._run`` with ``_collect`` in place of the non-blocking drain."""
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            items = []
            for entry in batch:
                if isinstance(entry, tuple):
                    self._cache.pop(entry[1], None)
                else:
                    items.append(entry)
            if items:
                try:
                    self._process(items)
                except BaseException as exc:
                    self._cache.clear()
                    for item in items:
                        if not item.done.is_set():
                            item.error = exc
                            item.done.set()
            if stop:
                return


# ------------------------------------------------------------------- rebuild

_decoder = msgspec.json.Decoder()
LEAN_SELECT = (
    "SELECT notification_id, originator_id, originator_version, topic, state"
    " FROM ledger_events WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
)


def lean_read(conn: Any, after: int, limit: int) -> list[Recorded]:
    """Like ``EventLog.read`` without the library's Notification objects and dict rows."""
    rows = conn.execute(LEAN_SELECT, (after, limit), prepare=True).fetchall()
    out = []
    decode = _decoder.decode
    for position, originator_id, version, topic, state in rows:
        data = decode(state)
        for key, value in data.items():
            if value.__class__ is dict and "_data_" in value:
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
    """COPY coalesced upserts into a temporary table, then one set-based upsert."""
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


def fill_all(
    db: Database,
    events: EventLog,
    projections: Sequence[Projection],
    suffix: str,
    *,
    chunk: int = 20_000,
    lean: bool = True,
    bulk: bool = True,
) -> tuple[int, dict[str, float]]:
    """Fold the whole log into ``*_g{suffix}`` of every projection in one pass.

    Returns (events read, seconds spent per stage)."""
    stages = {"read": 0.0, "fold": 0.0, "write": 0.0}
    position, count, seq = 0, 0, [0]
    pool = db.pool  # type: ignore[attr-defined]
    with pool.connection() as read_conn:
        while True:
            t0 = time.perf_counter()
            page = lean_read(read_conn, position, chunk) if lean else events.read(position, chunk)
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
            with db.transaction() as tx:
                for batch in batches:
                    if batch:
                        if bulk:
                            bulk_write(tx, batch, suffix, seq)
                        else:
                            from infrastructure.projection_store import write_batch

                            write_batch(tx, batch, suffix, bulk=True)
            stages["write"] += time.perf_counter() - t2
            position = page[-1].position
            count += len(page)
    return count, stages


def scratch_generation(db: Database, projections: Sequence[Projection], suffix: str) -> None:
    from infrastructure.projection_store import create_generation

    with db.transaction() as tx:
        for projection in projections:
            create_generation(tx, projection, read_state(tx, projection.name).generation, suffix)


def drop_scratch(db: Database, projections: Sequence[Projection], suffix: str) -> None:
    from infrastructure.projection_store import drop_generation

    with db.transaction() as tx:
        for projection in projections:
            drop_generation(tx, projection, suffix)
