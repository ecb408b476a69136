"""Every row of a table in full-row order, a page at a time (bounded memory at any size).

The order is the one Python gives ``sorted(rows, key=lambda r: tuple((v is None, v) ...))``:
column by column, text by code point, NULLs last. So a digest over the stream equals one
over the whole table sorted in Python, without holding the table.

- PostgreSQL: one server-side cursor over ``ORDER BY`` every column (text ``COLLATE "C"``,
  byte order = code point order in UTF-8; ``NULLS LAST``); one sort by the server, fetched
  in pages. Needs an open transaction (``Database.snapshot`` or ``transaction``).
- SQLite: keyset pages on the primary key (BINARY collation, code point order); the
  primary key is the leading columns of every read-model table, so its order is the
  full-row order (were it not, the order would still be one fixed order, the key's). A
  table without a primary key is read whole and sorted here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from infrastructure.db.sql import Row, Tx

PAGE = 5_000
_BYTE_ORDER = ' COLLATE "C"'


def ordered_rows(tx: Tx, table: str, page: int | None = None) -> Iterator[Row]:
    """Yield the rows of ``table`` in full-row order, ``page`` rows fetched at a time."""
    size = page or PAGE
    if tx.dialect == "postgres":
        yield from _postgres(tx, table, size)
    else:
        yield from _sqlite(tx, table, size)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _postgres(tx: Tx, table: str, size: int) -> Iterator[Row]:
    columns = tx.fetchall(
        "SELECT attname, attcollation <> 0 FROM pg_attribute"
        " WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    )
    order = ", ".join(
        f"{_quote(name)}{_BYTE_ORDER if text else ''} NULLS LAST" for name, text in columns
    )
    cursor = f"rows_{uuid.uuid4().hex[:12]}"
    tx.execute(f"DECLARE {cursor} NO SCROLL CURSOR FOR SELECT * FROM {table} ORDER BY {order}")
    try:
        while rows := tx.fetchall(f"FETCH FORWARD {size} FROM {cursor}"):
            yield from rows
    finally:
        tx.execute(f"CLOSE {cursor}")


def _sqlite(tx: Tx, table: str, size: int) -> Iterator[Row]:
    info = tx.fetchall(f"PRAGMA table_info({_quote(table)})")
    key = [(int(c[5]), int(c[0])) for c in info if int(c[5]) > 0]
    if not key:
        rows = tx.fetchall(f"SELECT * FROM {table}")
        rows.sort(key=lambda r: tuple((v is None, v) for v in r))
        yield from rows
        return
    at = [cid for _, cid in sorted(key)]
    names = ", ".join(_quote(str(info[cid][1])) for cid in at)
    first = f"SELECT * FROM {table} ORDER BY {names} LIMIT ?"
    after = f"SELECT * FROM {table} WHERE ({names}) > ({', '.join('?' * len(at))}) "
    after += f"ORDER BY {names} LIMIT ?"
    rows = tx.fetchall(first, (size,))
    while rows:
        yield from rows
        if len(rows) < size:
            return
        last = rows[-1]
        rows = tx.fetchall(after, (*(last[cid] for cid in at), size))
