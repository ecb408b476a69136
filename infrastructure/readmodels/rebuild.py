"""Blue/green rebuilds and live-equals-rebuilt verification of projections.

Two ways to fill a fresh generation from the log:

- ``python`` (``fill``): the folds in ``projections/``, the reference. One pass over the log
  for all the projections (decoding is the expensive part); each page's coalesced rows in one
  transaction. SQLite, and PostgreSQL with an encrypting or compressing event store.
- ``sql`` (``fill_sql``, PostgreSQL): the ledger projections loaded set-based by the server
  (``infrastructure.readmodels.rebuild_sql``, docs/adr/0015); the others folded in Python from
  only the events they can fold.

``rebuild`` uses ``sql`` where it applies (``method="auto"``); ``verify`` rebuilds with the
Python folds by default, so it checks whatever built the live tables against the reference.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from infrastructure.db.sql import Database, Tx
from infrastructure.eventstore.event_log import EventLog
from infrastructure.readmodels.rebuild_sql import (
    SqlTarget,
    bounds,
    capable,
    load_all,
    patterns_for,
    read_matching,
    translated,
)
from infrastructure.readmodels.store import (
    checksum,
    create_generation,
    drop_generation,
    point_views,
    read_state,
    set_position,
    write_batch,
)
from projections.base import Batch, Projection, Recorded, folds

Progress = Callable[[int, int, int], None]  # (position, head, events so far)
Method = Literal["auto", "sql", "python"]
CHUNK = 20_000


@dataclass(frozen=True)
class Target:
    """Where one projection's rows go, and the last position it should include."""

    projection: Projection
    suffix: int | str
    stop: int | None = None


def _write(tx: Tx, targets: Sequence[Target], page: Sequence[Recorded], *, bulk: bool) -> None:
    for target in targets:
        batch = Batch()
        fold, add, wants = target.projection.fold, batch.add, folds(target.projection)
        for event in page:
            if (target.stop is None or event.position <= target.stop) and (
                wants is None or wants(event.name)
            ):
                add(fold(event))
        if batch:
            write_batch(tx, batch, target.suffix, bulk=bulk)


def fill(
    db: Database,
    events: EventLog,
    targets: Sequence[Target],
    *,
    start: int = 0,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Fold events after ``start`` into every target's tables in one pass over the log.

    Returns (last position read, events read).
    """
    stops = [t.stop for t in targets]
    stop = None if any(s is None for s in stops) else max(s for s in stops if s is not None)
    position, count = start, 0
    while True:
        page = events.read(position, CHUNK, stop=stop)
        if not page:
            return position, count
        with db.transaction() as tx:
            _write(tx, targets, page, bulk=True)
        position = page[-1].position
        count += len(page)
        if progress is not None:
            progress(position, stop if stop is not None else events.head(), count)


def fill_sql(
    db: Database,
    events: EventLog,
    targets: Sequence[Target],
    *,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """What ``fill`` does from position 0 into empty tables, set-based on PostgreSQL.

    The ledger projections are loaded by the server (extracted once into a scratch table,
    then loaded on two connections at once, one transaction per projection: like ``fill``,
    the fresh tables are committed before the caller switches to them, and only if this
    returns); the others are folded in Python from the events they can fold, read with a
    server-side filter. Stops
    at the head as it is now (or at the targets' stops). Returns (last position, events).
    """
    stops = [t.stop for t in targets]
    stop = None if any(s is None for s in stops) else max(s for s in stops if s is not None)
    position, count = bounds(db, events, 0, stop)
    by_sql = [t for t in targets if translated(t.projection)]
    by_python = [t for t in targets if not translated(t.projection)]
    phases = len(by_sql) + 2 + (1 if by_python else 0)  # + extract, indexes
    done = 0

    def phase(_name: str = "") -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(position * done // phases, position, count * done // phases)

    if by_sql:
        load_all(
            db,
            events,
            [
                SqlTarget(t.projection, t.suffix, position if t.stop is None else t.stop)
                for t in by_sql
            ],
            progress=phase,
        )
    if by_python:
        patterns = patterns_for([t.projection for t in by_python])
        last = max(position if t.stop is None else min(t.stop, position) for t in by_python)
        after = 0
        while page := read_matching(events, after, last, CHUNK, patterns):
            with db.transaction() as tx:
                _write(tx, by_python, page, bulk=True)
            after = page[-1].position
        phase()
    return position, count


def _method(db: Database, events: EventLog, method: Method) -> Literal["sql", "python"]:
    if method == "python":
        return "python"
    if capable(db, events):
        return "sql"
    if method == "sql":
        raise ValueError("the set-based rebuild needs PostgreSQL and a plain-JSON event store")
    return "python"


@dataclass(frozen=True)
class RebuildReport:
    name: str
    old_generation: int
    new_generation: int
    position: int
    events: int


def rebuild(
    db: Database,
    events: EventLog,
    projections: Sequence[Projection],
    progress: Progress | None = None,
    *,
    method: Method = "auto",
) -> list[RebuildReport]:
    """Rebuild into the next generations while the current ones serve, then switch.

    ``method``: ``sql`` where it applies (``auto``, the default), or ``python``/``sql``.
    """
    how = _method(db, events, method)
    ordered = sorted(projections, key=lambda p: p.name)  # lock order: no deadlocks
    with db.transaction() as tx:
        old = {p.name: read_state(tx, p.name).generation for p in ordered}
        for p in ordered:
            create_generation(tx, p, old[p.name], old[p.name] + 1)
    targets = [Target(p, old[p.name] + 1) for p in ordered]
    try:
        if how == "sql":
            position, count = fill_sql(db, events, targets, progress=progress)
        else:
            position, count = fill(db, events, targets, progress=progress)
        with db.transaction() as tx:
            for p in ordered:
                if read_state(tx, p.name, lock=True).generation != old[p.name]:
                    raise RuntimeError(f"{p.name}: another rebuild switched generations")
            while True:  # the last events, under the locks, so none is missed
                page = events.read(position, CHUNK)
                if not page:
                    break
                _write(tx, targets, page, bulk=False)
                position, count = page[-1].position, count + len(page)
            for p in ordered:
                point_views(tx, p, old[p.name] + 1)
                set_position(tx, p.name, position, generation=old[p.name] + 1)
                drop_generation(tx, p, old[p.name])
    except BaseException:
        with db.transaction() as tx:
            for p in ordered:
                if read_state(tx, p.name).generation == old[p.name]:
                    drop_generation(tx, p, old[p.name] + 1)
        raise
    return [RebuildReport(p.name, old[p.name], old[p.name] + 1, position, count) for p in ordered]


@dataclass(frozen=True)
class Verification:
    name: str
    position: int
    live: str
    rebuilt: str
    rows: int

    @property
    def ok(self) -> bool:
        return self.live == self.rebuilt


def verify(
    db: Database,
    events: EventLog,
    projections: Sequence[Projection],
    progress: Progress | None = None,
    *,
    method: Method = "python",
) -> list[Verification]:
    """Rebuild from zero into scratch tables, each stopping at its live position, and compare.

    The live positions and checksums are read in one consistent snapshot. The rebuild uses
    the Python folds (the reference) unless ``method`` says otherwise.
    """
    how = _method(db, events, method)
    live: dict[str, tuple[int, str, int]] = {}
    with db.snapshot() as tx:
        generations = {}
        for p in projections:
            state = read_state(tx, p.name)
            generations[p.name] = state.generation
            digest, rows = checksum(tx, p, state.generation)
            live[p.name] = (state.position, digest, rows)
    scratch = f"verify{uuid.uuid4().hex[:12]}"  # its own: runs at once never share tables
    with db.transaction() as tx:
        for p in projections:
            create_generation(tx, p, generations[p.name], scratch)
    try:
        scratch_targets = [Target(p, scratch, stop=live[p.name][0]) for p in projections]
        if how == "sql":
            fill_sql(db, events, scratch_targets, progress=progress)
        else:
            fill(db, events, scratch_targets, progress=progress)
        results = []
        with db.snapshot() as tx:
            for p in projections:
                rebuilt, _ = checksum(tx, p, scratch)
                position, digest, rows = live[p.name]
                results.append(Verification(p.name, position, digest, rebuilt, rows))
    finally:
        with db.transaction() as tx:
            for p in projections:
                drop_generation(tx, p, scratch)
    return results
