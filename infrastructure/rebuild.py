"""Blue/green rebuilds and live-equals-rebuilt verification of projections.

Both read the log once for all the projections they handle (decoding is the expensive part)
and write each page's coalesced rows in one transaction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infrastructure.event_log import EventLog
from infrastructure.projection_store import (
    checksum,
    create_generation,
    drop_generation,
    point_views,
    read_state,
    set_position,
    write_batch,
)
from infrastructure.sql import Database, Tx
from projections.base import Batch, Projection, Recorded

Progress = Callable[[int, int, int], None]  # (position, head, events so far)
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
        fold, add = target.projection.fold, batch.add
        for event in page:
            if target.stop is None or event.position <= target.stop:
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
) -> list[RebuildReport]:
    """Rebuild into the next generations while the current ones serve, then switch."""
    ordered = sorted(projections, key=lambda p: p.name)  # lock order: no deadlocks
    with db.transaction() as tx:
        old = {p.name: read_state(tx, p.name).generation for p in ordered}
        for p in ordered:
            create_generation(tx, p, old[p.name], old[p.name] + 1)
    targets = [Target(p, old[p.name] + 1) for p in ordered]
    try:
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
) -> list[Verification]:
    """Rebuild from zero into scratch tables, each stopping at its live position, and compare.

    The live positions and checksums are read in one consistent snapshot.
    """
    live: dict[str, tuple[int, str, int]] = {}
    with db.snapshot() as tx:
        generations = {}
        for p in projections:
            state = read_state(tx, p.name)
            generations[p.name] = state.generation
            digest, rows = checksum(tx, p, state.generation)
            live[p.name] = (state.position, digest, rows)
    scratch = f"verify{os.getpid()}"
    with db.transaction() as tx:
        for p in projections:
            create_generation(tx, p, generations[p.name], scratch)
    try:
        fill(
            db,
            events,
            [Target(p, scratch, stop=live[p.name][0]) for p in projections],
            progress=progress,
        )
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
