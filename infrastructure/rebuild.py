"""Blue/green rebuilds and live-equals-rebuilt verification of projections."""

from __future__ import annotations

import os
from collections.abc import Callable
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
from infrastructure.sql import Database
from projections.base import Batch, Projection

Progress = Callable[[int, int, int], None]  # (position, head, events so far)
CHUNK = 10_000


def fill(
    db: Database,
    events: EventLog,
    projection: Projection,
    suffix: int | str,
    *,
    start: int = 0,
    stop: int | None = None,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Fold events ``start < position <= stop`` into the tables ``*_g{suffix}`` in chunks.

    Returns (last position read, events read).
    """
    position, count = start, 0
    while True:
        page = events.read(position, CHUNK, stop=stop)
        if not page:
            return position, count
        batch = Batch()
        for event in page:
            batch.add(projection.fold(event))
        if batch:
            with db.transaction() as tx:
                write_batch(tx, batch, suffix, bulk=True)
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
    db: Database, events: EventLog, projection: Projection, progress: Progress | None = None
) -> RebuildReport:
    """Rebuild into the next generation while the current one serves, then switch."""
    with db.transaction() as tx:
        state = read_state(tx, projection.name)
        target = state.generation + 1
        create_generation(tx, projection, state.generation, target)
    try:
        position, count = fill(db, events, projection, target, progress=progress)
        with db.transaction() as tx:
            live = read_state(tx, projection.name, lock=True)
            if live.generation != state.generation:
                raise RuntimeError(f"{projection.name}: another rebuild switched generations")
            while True:  # the last events, under the lock, so none is missed
                page = events.read(position, CHUNK)
                if not page:
                    break
                batch = Batch()
                for event in page:
                    batch.add(projection.fold(event))
                write_batch(tx, batch, target)
                position, count = page[-1].position, count + len(page)
            point_views(tx, projection, target)
            set_position(tx, projection.name, position, generation=target)
            drop_generation(tx, projection, state.generation)
    except BaseException:
        with db.transaction() as tx:
            if read_state(tx, projection.name).generation != target:
                drop_generation(tx, projection, target)
        raise
    return RebuildReport(projection.name, state.generation, target, position, count)


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
    db: Database, events: EventLog, projection: Projection, progress: Progress | None = None
) -> Verification:
    """Rebuild from zero into scratch tables, stopping at the live position, and compare."""
    with db.snapshot() as tx:
        state = read_state(tx, projection.name)
        live, rows = checksum(tx, projection, state.generation)
    scratch = f"verify{os.getpid()}"
    with db.transaction() as tx:
        create_generation(tx, projection, state.generation, scratch)
    try:
        if state.position:
            fill(db, events, projection, scratch, stop=state.position, progress=progress)
        with db.snapshot() as tx:
            rebuilt, _ = checksum(tx, projection, scratch)
    finally:
        with db.transaction() as tx:
            drop_generation(tx, projection, scratch)
    return Verification(projection.name, state.position, live, rebuilt, rows)
