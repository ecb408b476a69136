"""One small SQL layer for read models and identity tables on SQLite and PostgreSQL.

SQL is written once with ``?`` placeholders; the PostgreSQL adapter translates them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

Row = tuple[Any, ...]


class Tx(Protocol):
    """An open transaction."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def copy_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None: ...
    def lock_row(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


class Database(Protocol):
    """Transactions on the read-model database."""

    dialect: str

    def transaction(self) -> Any: ...
    def snapshot(self) -> Any: ...
    def read(self) -> Any: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------ SQLite


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.conn.execute(sql, params).fetchall())

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        marks = ", ".join("?" for _ in columns)
        self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def lock_row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        # The transaction was opened with BEGIN IMMEDIATE: it already holds the write lock.
        return self.fetchone(sql, params)


class SqliteDatabase:
    """SQLite in WAL mode; one connection per thread; writers take the lock up front."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[_SqliteTx]:
        """No transaction: for one-statement reads (each statement is atomic on its own)."""
        yield _SqliteTx(self._conn())

    @contextmanager
    def snapshot(self) -> Iterator[_SqliteTx]:
        """A read-only transaction that sees one consistent state."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield _SqliteTx(conn)
        finally:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# -------------------------------------------------------------------- PostgreSQL


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _PostgresTx:
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self.conn.execute(_pg(sql), params or None)
        return int(cur.rowcount)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), list(rows))

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.conn.execute(_pg(sql), params or None).fetchall())

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(_pg(sql), params or None).fetchone()
        return row

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def lock_row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self.fetchone(sql + " FOR UPDATE", params)


class PostgresDatabase:
    """PostgreSQL through a psycopg 3 connection pool.

    ``server_prepare=False`` (behind PgBouncer in transaction mode): no server-side prepared
    statements, which would live on whichever server connection the pooler lent that time.
    """

    dialect = "postgres"

    def __init__(self, conninfo: str, max_size: int = 10, *, server_prepare: bool = True) -> None:
        from psycopg_pool import ConnectionPool

        kwargs: dict[str, Any] = {"autocommit": True}
        if not server_prepare:
            kwargs["prepare_threshold"] = None
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            open=True,
            timeout=30,
            kwargs=kwargs,
        )

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTx]:
        with self.pool.connection() as conn, conn.transaction():
            yield _PostgresTx(conn)

    @contextmanager
    def read(self) -> Iterator[_PostgresTx]:
        """No transaction: for one-statement reads (autocommit connection)."""
        with self.pool.connection() as conn:
            yield _PostgresTx(conn)

    @contextmanager
    def snapshot(self) -> Iterator[_PostgresTx]:
        with self.pool.connection() as conn, conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _PostgresTx(conn)

    def close(self) -> None:
        self.pool.close()
