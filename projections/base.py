"""Projections are pure folds: a recorded event in, row operations out.

No clock, no look-ups, no I/O: a rebuild from zero gives exactly the rows the live runner
wrote. The runner (``infrastructure.readmodels.runner``) applies the operations together with
the projection's tracking position in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID


def _micros(data: dict[str, Any]) -> int:
    """Business time (``at``, else the recording ``timestamp``) in epoch microseconds."""
    return to_micros(data.get("at", data.get("timestamp")))


def to_micros(at: object) -> int:
    """An event time (ISO string, datetime or epoch microseconds) in epoch microseconds."""
    if isinstance(at, int):
        return at
    moment = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@dataclass(frozen=True, slots=True)
class Recorded:
    """A stored event as projections see it: position in the log, origin, type name, data.

    ``at_micros`` (the event's business time) is computed once here, not in every fold.
    """

    position: int
    originator_id: UUID
    version: int
    name: str  # e.g. "CreditAccount.Granted"
    data: dict[str, Any]
    at_micros: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at_micros", _micros(self.data))

    @property
    def minute(self) -> int:
        return self.at_micros // 60_000_000

    @property
    def day(self) -> str:
        return datetime.fromtimestamp(self.at_micros // 1_000_000, UTC).date().isoformat()


@dataclass(slots=True)
class Upsert:
    """Create the row if missing; ``put`` sets columns, ``add`` adds to them (0 if new)."""

    table: str
    key: dict[str, Any]
    put: dict[str, Any] = field(default_factory=dict)
    add: dict[str, int] = field(default_factory=dict)

    def merge(self, later: Upsert) -> None:
        """Fold a later upsert of the same row into this one."""
        for column, value in later.put.items():
            self.put[column] = value
            self.add.pop(column, None)
        for column, delta in later.add.items():
            if column in self.put:
                self.put[column] += delta
            else:
                self.add[column] = self.add.get(column, 0) + delta


@dataclass(frozen=True, slots=True)
class Insert:
    """Append one row (the table's key must be unique per event)."""

    table: str
    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Span:
    """Requests from ``first`` to ``last`` (epoch microseconds) of one ``group``.

    The store extends the group's newest row (the highest ``seq``; columns ``start_at`` and
    ``end_at``) when the span comes within ``gap`` of it, else opens a new row keyed
    ``ident`` with ``seq`` (which must grow in log order). Decided from event times and the
    rows folded before, in log order only: a rebuild gives the same rows.
    """

    table: str
    group: dict[str, Any]
    ident: dict[str, Any]
    seq: int
    first: int
    last: int
    gap: int
    put: dict[str, Any] = field(default_factory=dict)
    add: dict[str, int] = field(default_factory=dict)


Op = Upsert | Insert | Span


class Projection(Protocol):
    """A named pure fold over recorded events into one or more tables.

    ``events`` names the events the fold can turn into operations, as SQL ``LIKE`` patterns
    of the event name (``"GpuInstance.%"``, ``"ProxyUsage.Recorded"``); ``None`` if it reads
    every event. The runner and the rebuild hand a fold only those events (the rebuild has the
    server filter them), so a fold must return no operations for any other event
    (tests/integration/test_rebuild_sql.py checks it over every kind of event).
    """

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    @property
    def events(self) -> tuple[str, ...] | None: ...

    def fold(self, event: Recorded) -> Iterable[Op]: ...


def folds(projection: Projection) -> Callable[[str], bool] | None:
    """A test of an event name against ``projection.events``; ``None`` if it folds every event.

    Only the pattern forms the projections use: an exact name, or a prefix then ``%``.
    """
    patterns = projection.events
    if patterns is None:
        return None
    exact = frozenset(p for p in patterns if not p.endswith("%"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("%"))
    if any("%" in p or "_" in p for p in (*exact, *prefixes)):
        raise ValueError(f"{projection.name}: only 'Name' or 'Prefix%' patterns: {patterns}")
    return lambda name: name in exact or name.startswith(prefixes)


class Batch:
    """Coalesces the operations of many events: one write per touched row."""

    def __init__(self) -> None:
        self.upserts: dict[tuple[str, tuple[Any, ...]], Upsert] = {}
        self.inserts: dict[str, list[dict[str, Any]]] = {}
        self.spans: list[Span] = []
        self.events = 0

    def add(self, ops: Iterable[Op]) -> None:
        self.events += 1
        for op in ops:
            if isinstance(op, Insert):
                self.inserts.setdefault(op.table, []).append(op.row)
                continue
            if isinstance(op, Span):
                self.spans.append(op)
                continue
            ident = (op.table, tuple(op.key.items()))
            existing = self.upserts.get(ident)
            if existing is None:
                self.upserts[ident] = Upsert(op.table, op.key, dict(op.put), dict(op.add))
            else:
                existing.merge(op)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.inserts or self.spans)
