"""Writes projection operations into SQL tables, with tracking, generations and checksums."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from infrastructure.db.sql import Database, Tx
from infrastructure.readmodels.ordered_rows import ordered_rows
from projections.base import Batch, Projection, Span


@dataclass(frozen=True)
class State:
    name: str
    generation: int
    position: int


def physical(table: str, generation: int | str) -> str:
    return f"{table}_g{generation}"


def read_state(tx: Tx, name: str, *, lock: bool = False) -> State:
    sql = "SELECT generation, position FROM projection_state WHERE name = ?"
    row = tx.lock_row(sql, (name,)) if lock else tx.fetchone(sql, (name,))
    if row is None:
        raise LookupError(f"unknown projection {name!r}; run migrations first")
    return State(name, int(row[0]), int(row[1]))


def all_states(db: Database) -> list[State]:
    with db.snapshot() as tx:
        rows = tx.fetchall("SELECT name, generation, position FROM projection_state ORDER BY name")
    return [State(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def set_position(tx: Tx, name: str, position: int, generation: int | None = None) -> None:
    if generation is None:
        tx.execute("UPDATE projection_state SET position = ? WHERE name = ?", (position, name))
    else:
        tx.execute(
            "UPDATE projection_state SET position = ?, generation = ? WHERE name = ?",
            (position, generation, name),
        )


def write_batch(tx: Tx, batch: Batch, suffix: int | str, *, bulk: bool = False) -> None:
    """Apply coalesced operations to the tables of one generation.

    ``bulk`` (rebuild into empty tables) streams inserts with COPY on PostgreSQL.
    """
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
        target = physical(table, suffix)
        columns = (*keys, *puts, *adds)
        updates = [f"{c} = excluded.{c}" for c in puts] + [
            f"{c} = {target}.{c} + excluded.{c}" for c in adds
        ]
        conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        sql = (
            f"INSERT INTO {target} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT ({', '.join(keys)}) {conflict}"
        )
        tx.executemany(
            sql,
            [
                (*(u.key[c] for c in keys), *(u.put[c] for c in puts), *(u.add[c] for c in adds))
                for u in upserts
            ],
        )
    if batch.spans:
        _write_spans(tx, batch.spans, suffix)
    for table, rows in batch.inserts.items():
        target = physical(table, suffix)
        columns = tuple(rows[0])
        values = [tuple(row[c] for c in columns) for row in rows]
        if bulk:
            tx.copy_rows(target, columns, values)
        else:
            tx.executemany(
                f"INSERT INTO {target} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                values,
            )


@dataclass
class _Row:
    """A span row as the spans of one batch leave it: opened here (``new``) or extended."""

    ident: dict[str, Any]
    seq: int
    start_at: int
    end_at: int
    new: bool
    put: dict[str, Any]
    add: dict[str, int]


def _newest(tx: Tx, span: Span, target: str) -> _Row | None:
    where = " AND ".join(f"{c} = ?" for c in span.group)
    idents = list(span.ident)
    found = tx.fetchone(
        f"SELECT {', '.join(idents)}, seq, start_at, end_at FROM {target} "
        f"WHERE {where} ORDER BY seq DESC LIMIT 1",
        tuple(span.group.values()),
    )
    if found is None:
        return None
    seq, start, end = (int(v) for v in found[-3:])
    return _Row(dict(zip(idents, found[:-3], strict=True)), seq, start, end, False, {}, {})


def _write_spans(tx: Tx, spans: list[Span], suffix: int | str) -> None:
    """Apply spans in log order (see ``Span``): each group's newest row is read once and
    every touched row written once."""
    newest: dict[tuple[str, tuple[Any, ...]], _Row | None] = {}
    touched: list[tuple[str, _Row]] = []
    for span in spans:
        target = physical(span.table, suffix)
        group = (span.table, tuple(span.group.items()))
        if group not in newest:
            newest[group] = row = _newest(tx, span, target)
            if row is not None:
                touched.append((target, row))
        row = newest[group]
        near = row is not None and (
            span.first <= row.end_at + span.gap and span.last >= row.start_at - span.gap
        )
        if row is not None and near:
            row.start_at, row.end_at = min(row.start_at, span.first), max(row.end_at, span.last)
            row.put.update(span.put)
            for column, delta in span.add.items():
                row.add[column] = row.add.get(column, 0) + delta
            continue
        row = _Row(
            dict(span.ident),
            span.seq,
            span.first,
            span.last,
            True,
            {**span.group, **span.put},
            dict(span.add),
        )
        newest[group] = row
        touched.append((target, row))
    for target, row in touched:
        if row.new:
            values = {
                **row.ident,
                "seq": row.seq,
                "start_at": row.start_at,
                "end_at": row.end_at,
                **row.put,
                **row.add,
            }
            tx.execute(
                f"INSERT INTO {target} ({', '.join(values)}) "
                f"VALUES ({', '.join('?' for _ in values)})",
                tuple(values.values()),
            )
        elif row.put or row.add:
            sets = ["start_at = ?", "end_at = ?"] + [f"{c} = ?" for c in row.put]
            sets += [f"{c} = {c} + ?" for c in row.add]
            tx.execute(
                f"UPDATE {target} SET {', '.join(sets)} "
                f"WHERE {' AND '.join(f'{c} = ?' for c in row.ident)}",
                (
                    row.start_at,
                    row.end_at,
                    *row.put.values(),
                    *row.add.values(),
                    *row.ident.values(),
                ),
            )


# ------------------------------------------------------------ generations & views


def _objects_sqlite(tx: Tx, table: str) -> list[tuple[str, str, str]]:
    rows = tx.fetchall(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
        "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END",
        (table,),
    )
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def create_generation(tx: Tx, projection: Projection, source: int, target: int | str) -> None:
    """Create empty tables for generation ``target`` shaped like generation ``source``."""
    for table in projection.tables:
        old, new = physical(table, source), physical(table, target)
        tx.execute(f"DROP TABLE IF EXISTS {new}")
        if tx.dialect == "postgres":
            tx.execute(f"CREATE TABLE {new} (LIKE {old} INCLUDING ALL)")
            continue
        for _kind, _name, sql in _objects_sqlite(tx, old):
            tx.execute(sql.replace(old, new))


def drop_generation(tx: Tx, projection: Projection, generation: int | str) -> None:
    for table in projection.tables:
        tx.execute(f"DROP TABLE IF EXISTS {physical(table, generation)}")


def point_views(tx: Tx, projection: Projection, generation: int) -> None:
    """Make the reader-facing views select from ``generation``."""
    for table in projection.tables:
        tx.execute(f"DROP VIEW IF EXISTS {table}")
        tx.execute(f"CREATE VIEW {table} AS SELECT * FROM {physical(table, generation)}")


# ------------------------------------------------------------------- checksums


def _normalise(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return value


def checksum(tx: Tx, projection: Projection, generation: int | str) -> tuple[str, int]:
    """An ordered SHA-256 over every row of a projection's tables; returns (digest, rows).

    Streams each table in full-row order (``infrastructure.readmodels.ordered_rows``): memory stays
    bounded however many rows there are. Call it inside a transaction (``snapshot``).
    """
    digest = hashlib.sha256()
    count = 0
    for table in projection.tables:
        digest.update(table.encode())
        for row in ordered_rows(tx, physical(table, generation)):
            digest.update(repr(tuple(_normalise(v) for v in row)).encode())
            count += 1
    return digest.hexdigest(), count
