"""Set-based rebuild of the ledger's read models on PostgreSQL (docs/adr/0015).

The Python folds decode every event in the client (~50 µs per event for all projections,
docs/performance.md); decoding alone is over the budget of a rebuild near the raw read rate.
Here the server does the per-event work where the rows are:

1. one statement extracts, from every ``CreditAccount`` event up to the stop position, the
   columns the four ledger projections need into an unlogged scratch table (the JSON is
   parsed once, by PostgreSQL, with its parallel workers; business time becomes epoch
   microseconds as ``to_micros`` computes it), committed, and dropped after the loads;
2. one ``INSERT … SELECT`` per table groups those rows per key into the fresh (green)
   generation, whose indexes are dropped for the load and built afterwards. The projections
   are loaded on ``CONNECTIONS`` connections at once (the loads are CPU-bound in the
   server), each group in its own transaction; the green tables are switched to only after
   every load succeeded (``infrastructure.readmodels.rebuild``), as with the Python fill.

The SQL is a translation of ``projections/ledger.py``, whose folds stay the reference:
``verify`` rebuilds with them, and tests compare both row for row. The semantics of
``Upsert`` are kept: ``add`` columns are sums (0 when no event adds), ``put`` columns take
the value of the event with the highest position, a row exists once an event touched it.
Other projections (instances, payments, proxy load: few events) keep their Python fold, over
only the events they can fold (each projection's ``events``, filtered by the server).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from infrastructure.db.sql import Database, Tx
from infrastructure.eventstore.event_log import EventLog
from infrastructure.readmodels.store import physical
from projections.base import Projection, Recorded
from projections.ledger import (
    ACCOUNT,
    SPEND_EVENTS,
    TRANSACTION_KINDS,
    BalancesProjection,
    SpendingProjection,
    TransactionsProjection,
    UsageProjection,
)

#: The projections translated to SQL, by name, with the fold class they translate.
TRANSLATED: dict[str, type] = {
    "balances": BalancesProjection,
    "transactions": TransactionsProjection,
    "spending": SpendingProjection,
    "usage": UsageProjection,
}

# Account events whose rarely used fields stay as JSON in the extract (``extra``).
_RARE = ("Opened", "CapSet", "AutoRenewConfigured", "LimitsSet", "WindowsReset")
_SPEND = tuple(name.removeprefix(ACCOUNT) for name in sorted(SPEND_EVENTS))
_MONEY = {name.removeprefix(ACCOUNT): kind for name, kind in TRANSACTION_KINDS.items()}
_EXTRACT = "rebuild_extract_"  # + the epoch second it was made + a unique suffix
#: A scratch table this old was left by a rebuild that died (a rebuild reads its extract for
#: minutes, not a day); the next extract drops it.
STALE_AFTER_S = 86_400
MICROS_PER_MINUTE = 60_000_000
MICROS_PER_DAY = 86_400_000_000

Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class SqlTarget:
    """One projection to load: its generation suffix and the last position it includes."""

    projection: Projection
    suffix: int | str
    stop: int


def translated(projection: Projection) -> bool:
    """True if ``projection`` is one of the ledger folds this module translates."""
    fold = TRANSLATED.get(projection.name)
    return fold is not None and type(projection) is fold


def capable(db: Database, events: EventLog) -> bool:
    """The SQL path applies: PostgreSQL, events stored as plain JSON in the same database."""
    if db.dialect != "postgres" or events._cipher is not None or events._compressor is not None:
        return False
    table = events_table(events)
    if table is None:
        return False
    probe = "SELECT current_database(), inet_server_port(), to_regclass(%s) IS NOT NULL"
    with events.recorder.datastore.get_connection() as conn:
        theirs = _values(conn.execute(probe, (table,)).fetchone())
    with db.read() as tx:
        ours = _conn(tx).execute(probe, (table,)).fetchone()
    return ours is not None and tuple(ours) == theirs and bool(theirs[2])


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def events_table(events: EventLog) -> str | None:
    """The recorder's events table, schema-qualified and quoted; ``None`` if not PostgreSQL."""
    recorder = events.recorder
    schema = getattr(getattr(recorder, "datastore", None), "schema", None)
    name = getattr(recorder, "events_table_name", None)
    if not isinstance(schema, str) or not isinstance(name, str):
        return None
    return f"{_quote(schema)}.{_quote(name)}"


def _conn(tx: Tx) -> Any:
    """The psycopg connection under a PostgreSQL transaction."""
    return tx.conn  # type: ignore[attr-defined]


def _table(events: EventLog) -> str:
    table = events_table(events)
    if table is None:
        raise TypeError("the set-based rebuild needs the PostgreSQL recorder")
    return table


# --------------------------------------------------------------------- the log


def bounds(db: Database, events: EventLog, start: int, stop: int | None) -> tuple[int, int]:
    """(last position, events) in ``(start, stop]`` (``stop=None``: up to the head)."""
    query = (
        f"SELECT coalesce(max(notification_id), %s), count(*) FROM {_table(events)} "
        "WHERE notification_id > %s AND notification_id <= %s"
    )
    with db.read() as tx:
        row = _conn(tx).execute(query, (start, start, stop if stop is not None else 2**62))
        position, count = row.fetchone()
    return int(position), int(count)


@dataclass(frozen=True)
class _Row:
    """The attributes of a library ``Notification`` that ``EventLog.decode`` reads."""

    id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


def read_matching(
    events: EventLog, after: int, stop: int, limit: int, patterns: Sequence[str] | None
) -> list[Recorded]:
    """Up to ``limit`` decoded events in ``(after, stop]`` whose name matches a pattern
    (``None``: every event), oldest first."""
    where = "notification_id > %s AND notification_id <= %s"
    params: list[Any] = [after, stop]
    if patterns is not None:
        where += " AND split_part(topic, ':', -1) LIKE ANY(%s)"
        params.append(list(patterns))
    query = (
        "SELECT notification_id, originator_id, originator_version, topic, state "
        f"FROM {_table(events)} WHERE {where} ORDER BY notification_id LIMIT %s"
    )
    params.append(limit)
    with events.recorder.datastore.get_connection() as conn:
        rows = conn.execute(query, params).fetchall()
    return events.decode([_Row(*_values(r)) for r in rows])


def _values(row: Any) -> tuple[Any, ...]:
    if isinstance(row, dict):  # the library's connections return dict rows
        return tuple(row.values())
    return tuple(row)


def patterns_for(projections: Sequence[Projection]) -> list[str] | None:
    """The union of the projections' ``events`` patterns; ``None`` if any reads every event."""
    union: list[str] = []
    for projection in projections:
        own = projection.events
        if own is None:
            return None
        union.extend(p for p in own if p not in union)
    return union


# ------------------------------------------------------------------ the load


def _floordiv(expr: str, divisor: int) -> str:
    """Python's ``//`` for a bigint expression (PostgreSQL's ``/`` truncates)."""
    return f"(({expr}) / {divisor} - (({expr}) % {divisor} < 0)::int)"


def _text(field: str) -> str:
    """``str(data.get(field, ""))`` for the string fields the domain writes."""
    return (
        f"coalesce(j->>'{field}', CASE WHEN j->'{field}' IS NULL THEN '' ELSE 'None' END) "
        f"AS {field}"
    )


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _extract_sql(table: str, start: int, stop: int, name: str) -> str:
    """Every account event in ``(start, stop]`` as one row of the columns the folds read.

    ``at`` is ``to_micros(data.get("at", data.get("timestamp")))``: an integer as it is, else
    ``int(moment.timestamp()) * 1_000_000 + moment.microsecond`` of the ISO time. The JSON
    (and the time) is parsed once per event: the single-row ``unnest`` keeps the planner from
    copying the expression into each use (``at`` itself is only a key lookup: repeating it
    is cheaper than one more lateral row). Not sorted: the loads group (and sort) anyway.
    """
    at = "coalesce(j->'at', j->'timestamp')"
    return f"""
        CREATE UNLOGGED TABLE {name} AS
        SELECT e.notification_id AS position,
               e.originator_id AS account,
               e.originator_version AS version,
               e.kind,
               (j->>'amount')::bigint AS amount,
               CASE WHEN ts IS NULL THEN ({at})::bigint
                    ELSE trunc(date_part('epoch', ts))::bigint * 1000000
                         + date_part('microseconds', ts)::bigint % 1000000 END AS at,
               {_text("hold_id")}, {_text("reason")}, {_text("reference")}, {_text("actor")},
               CASE WHEN e.kind IN {_in(_RARE)} THEN j END AS extra
        FROM (SELECT notification_id, originator_id, originator_version, state,
                     substr(split_part(topic, ':', -1), {len(ACCOUNT) + 1}) AS kind
              FROM {table}
              WHERE notification_id > {start} AND notification_id <= {stop}
                AND starts_with(split_part(topic, ':', -1), '{ACCOUNT}')) e
        CROSS JOIN LATERAL unnest(ARRAY[convert_from(e.state, 'UTF8')::jsonb]) p(j)
        CROSS JOIN LATERAL unnest(ARRAY[
            CASE WHEN jsonb_typeof({at}) <> 'number'
                 THEN coalesce({at}->>'_data_', {at} #>> '{{}}')::timestamptz END]) r(ts)
    """


def _balances(suffix: int | str, stop: int, source: str) -> list[str]:
    target = physical("balances", suffix)
    return [
        f"""
        WITH per_kind AS (
            SELECT account, kind, sum(amount) AS amount, max(position) AS last
            FROM {source} WHERE position <= {stop} GROUP BY account, kind
        ), per_account AS (
            SELECT account,
                   coalesce(sum(amount) FILTER (WHERE kind = 'Granted'), 0) AS granted,
                   coalesce(sum(amount) FILTER (WHERE kind IN ('Charged', 'HoldCaptured')), 0)
                       AS charged,
                   coalesce(sum(amount) FILTER (WHERE kind = 'Debited'), 0) AS debited,
                   coalesce(sum(amount) FILTER (WHERE kind = 'HoldPlaced'), 0)
                   - coalesce(sum(amount) FILTER (WHERE kind IN
                         ('HoldCaptured', 'HoldReleased', 'HoldExpired')), 0) AS held,
                   max(last) AS last,
                   max(last) FILTER (WHERE kind = 'Opened') AS opened,
                   max(last) FILTER (WHERE kind = 'CapSet') AS cap_set,
                   max(last) FILTER (WHERE kind = 'AutoRenewConfigured') AS renew
            FROM per_kind GROUP BY account
        ), rare AS MATERIALIZED (
            SELECT position, extra FROM {source}
            WHERE extra IS NOT NULL AND position <= {stop}
        ), latest AS MATERIALIZED (
            SELECT x.position, x.version, x.at FROM {source} x
            WHERE x.position IN (SELECT last FROM per_account)
        )
        INSERT INTO {target} (account_id, user_id, balance, held, total_granted,
            total_charged, total_debited, cap, auto_renew_enabled, auto_renew_threshold,
            auto_renew_amount, version, updated_at)
        SELECT a.account::text,
               coalesce(o.extra->>'user_id', ''),
               a.granted - a.charged - a.debited, a.held, a.granted, a.charged, a.debited,
               coalesce((c.extra->>'cap')::bigint, 0),
               coalesce(CASE jsonb_typeof(r.extra->'enabled')
                   WHEN 'boolean' THEN (r.extra->'enabled')::boolean::int
                   WHEN 'number' THEN ((r.extra->'enabled')::numeric <> 0)::int
                   WHEN 'string' THEN (r.extra->>'enabled' <> '')::int
                   WHEN 'array' THEN (jsonb_array_length(r.extra->'enabled') > 0)::int
                   WHEN 'object' THEN (r.extra->'enabled' <> '{{}}'::jsonb)::int
                   ELSE 0 END, 0),
               coalesce((r.extra->>'threshold')::bigint, 0),
               coalesce((r.extra->>'amount')::bigint, 0),
               l.version, l.at
        FROM per_account a
        JOIN latest l ON l.position = a.last
        LEFT JOIN rare o ON o.position = a.opened
        LEFT JOIN rare c ON c.position = a.cap_set
        LEFT JOIN rare r ON r.position = a.renew
        ORDER BY a.account
        """
    ]


def _transactions(suffix: int | str, stop: int, source: str) -> list[str]:
    target = physical("transactions", suffix)
    kind = " ".join(f"WHEN '{name}' THEN '{label}'" for name, label in _MONEY.items())
    return [
        f"""
        INSERT INTO {target} (position, account_id, version, kind, amount, hold_id, reason,
            reference, actor, at)
        SELECT position, account::text, version, CASE kind {kind} END, coalesce(amount, 0),
               hold_id, reason, reference, actor, at
        FROM {source} x WHERE kind IN {_in(tuple(_MONEY))} AND position <= {stop}
        """
    ]


def _spending(suffix: int | str, stop: int, source: str) -> list[str]:
    minute = _floordiv("at", MICROS_PER_MINUTE)
    return [
        f"""
        INSERT INTO {physical("spending_buckets", suffix)} (account_id, minute, amount)
        SELECT account::text, minute, amount FROM (
            SELECT account, {minute} AS minute, sum(amount) AS amount
            FROM {source} WHERE kind IN {_in(_SPEND)} AND position <= {stop}
            GROUP BY 1, 2
        ) g
        ORDER BY g.account, g.minute
        """,
        f"""
        INSERT INTO {physical("spending_resets", suffix)} (account_id, window_name, minute,
            amount)
        SELECT DISTINCT ON (account, w.name) account::text, w.name,
               (extra->>'minute')::bigint, (extra->>'bucket_amount')::bigint
        FROM {source} CROSS JOIN LATERAL jsonb_array_elements_text(extra->'windows') w(name)
        WHERE kind = 'WindowsReset' AND position <= {stop}
        ORDER BY account, w.name, position DESC
        """,
        f"""
        INSERT INTO {physical("spending_limits", suffix)} (account_id, window_name, amount)
        SELECT DISTINCT ON (account, c.key) account::text, c.key,
               CASE jsonb_typeof(c.value) WHEN 'null' THEN -1
                    ELSE (c.value #>> '{{}}')::bigint END
        FROM {source} CROSS JOIN LATERAL jsonb_each(extra->'changes') c
        WHERE kind = 'LimitsSet' AND position <= {stop}
        ORDER BY account, c.key, position DESC
        """,
    ]


def _usage(suffix: int | str, stop: int, source: str) -> list[str]:
    day = _floordiv("at", MICROS_PER_DAY)
    spend = f"kind IN {_in(_SPEND)}"
    return [
        f"""
        INSERT INTO {physical("usage_daily", suffix)} (account_id, day, spent, spend_count,
            granted, debited)
        SELECT account::text, to_char(date '1970-01-01' + day::int, 'YYYY-MM-DD'),
               spent, spend_count, granted, debited
        FROM (
            SELECT account, {day} AS day,
                   coalesce(sum(amount) FILTER (WHERE {spend}), 0) AS spent,
                   count(*) FILTER (WHERE {spend}) AS spend_count,
                   coalesce(sum(amount) FILTER (WHERE kind = 'Granted'), 0) AS granted,
                   coalesce(sum(amount) FILTER (WHERE kind = 'Debited'), 0) AS debited
            FROM {source}
            WHERE kind IN {_in((*_SPEND, "Granted", "Debited"))} AND position <= {stop}
            GROUP BY 1, 2
        ) g
        ORDER BY g.account, g.day
        """
    ]


_STATEMENTS = {
    "balances": _balances,
    "transactions": _transactions,
    "spending": _spending,
    "usage": _usage,
}


@dataclass(frozen=True)
class _Index:
    table: str
    name: str
    constraint: str | None  # "PRIMARY KEY (…)" / "UNIQUE (…)", else a plain index
    definition: str  # CREATE INDEX … for a plain index


def _indexes(tx: Tx, table: str) -> list[_Index]:
    rows = tx.fetchall(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), "
        "(SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k "
        " WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = ?::regclass ORDER BY c.relname",
        (table,),
    )
    return [_Index(table, str(r[0]), r[2], str(r[1])) for r in rows]


@contextmanager
def _without_indexes(tx: Tx, tables: Sequence[str]) -> Iterator[None]:
    """Drop the tables' indexes (and the constraints they back) for a bulk load, then build
    them again under the same names and definitions."""
    dropped = [index for table in tables for index in _indexes(tx, table)]
    for index in dropped:
        if index.constraint is not None:
            tx.execute(f"ALTER TABLE {index.table} DROP CONSTRAINT {index.name}")
        else:
            tx.execute(f"DROP INDEX {index.name}")
    yield
    for index in dropped:
        if index.constraint is not None:
            tx.execute(f"ALTER TABLE {index.table} ADD CONSTRAINT {index.name} {index.constraint}")
        else:
            tx.execute(index.definition)


#: Relative cost of each projection's load and index builds (measured, 200,000 events), to
#: spread the loads over the connections.
_WEIGHT = {"spending": 6, "transactions": 5, "usage": 3, "balances": 1}
#: Connections that load at once (the server's cores; the loads are CPU-bound).
CONNECTIONS = 2


def _session(tx: Tx) -> None:
    tx.execute("SET LOCAL work_mem = '256MB'")
    tx.execute("SET LOCAL maintenance_work_mem = '512MB'")
    tx.execute("SET LOCAL TimeZone = 'UTC'")
    # The extract has no statistics: without these, the planner's guesses sort where hashing
    # is cheaper, and its cost estimates switch on JIT compilation (~1 s, for nothing).
    tx.execute("SET LOCAL jit = off")
    tx.execute("SET LOCAL enable_sort = off")


def extract(db: Database, events: EventLog, stop: int, *, start: int = 0) -> tuple[str, int]:
    """Extract the account events in ``(start, stop]`` into a new scratch table (unlogged,
    committed, so that several connections can load from it); returns (its name, rows).

    The caller drops it (``drop_extract``); one a killed process left behind is dropped by a
    later extract once it is ``STALE_AFTER_S`` old.
    """
    now = int(time.time())
    drop_stale_extracts(db, now - STALE_AFTER_S)
    name = f"{_EXTRACT}{now}_{uuid4().hex}"
    with db.transaction() as tx:
        _session(tx)
        # The extract is the per-event work: let the server's parallel workers share it
        # (within its own max_parallel_workers_per_gather) even though the planner cannot
        # count the rows.
        tx.execute("SET LOCAL parallel_setup_cost = 0")
        tx.execute("SET LOCAL parallel_tuple_cost = 0.001")
        count = tx.execute(_extract_sql(_table(events), start, stop, name))
    return name, count


def drop_stale_extracts(db: Database, made_before: int) -> list[str]:
    """Drop the scratch tables (of this schema) made before ``made_before`` (epoch seconds)."""
    with db.read() as tx:
        rows = tx.fetchall(
            "SELECT relname FROM pg_class WHERE relkind = 'r' "
            "AND relnamespace = current_schema()::regnamespace AND starts_with(relname, ?)",
            (_EXTRACT,),
        )
    stale = []
    for (name,) in rows:
        made = str(name).removeprefix(_EXTRACT).split("_", 1)[0]
        if not made.isdigit() or int(made) < made_before:  # no stamp: from before the stamps
            stale.append(str(name))
    for name in stale:
        drop_extract(db, name)
    return stale


def drop_extract(db: Database, name: str) -> None:
    with db.transaction() as tx:
        tx.execute(f"DROP TABLE IF EXISTS {_quote(name)}")


def load(tx: Tx, source: str, targets: Sequence[SqlTarget]) -> None:
    """Fill the (empty) tables of ``targets`` from the extract ``source``, in ``tx``."""
    _session(tx)
    tables = [physical(t, target.suffix) for target in targets for t in target.projection.tables]
    with _without_indexes(tx, tables):
        for target in targets:
            statements = _STATEMENTS[target.projection.name]
            for statement in statements(target.suffix, target.stop, source):
                tx.execute(statement)


def load_all(
    db: Database,
    events: EventLog,
    targets: Sequence[SqlTarget],
    *,
    start: int = 0,
    progress: Callable[[str], None] | None = None,
    connections: int = CONNECTIONS,
) -> int:
    """Fill the (empty) tables of ``targets`` from the account events in ``(start, stop]``.

    One transaction extracts the events into a scratch table; then ``connections``
    connections load the tables from it at once, one transaction per projection (its tables
    and their indexes), the heaviest first. Each commits on its own: the tables are a
    generation nobody reads until the caller switches to it, which it must do only if this
    returns; on a failure the loads not started are cancelled, and it raises once the running
    ones have ended. The scratch table is dropped either way. Returns the number of account
    events extracted.
    """
    if not targets:
        return 0
    for target in targets:
        if not translated(target.projection):
            raise ValueError(f"{target.projection.name}: no SQL translation")
    source, extracted = extract(db, events, max(t.stop for t in targets), start=start)
    try:
        if progress is not None:
            progress("extract")

        def run(target: SqlTarget) -> None:
            with db.transaction() as tx:
                load(tx, source, [target])

        # The heaviest first: whichever connection is free next takes the next one.
        ordered = sorted(targets, key=lambda t: -_WEIGHT.get(t.projection.name, 1))
        workers = max(1, min(connections, len(ordered)))
        failures: list[BaseException] = []
        with ThreadPoolExecutor(workers, thread_name_prefix="rebuild-load") as pool:
            futures = {pool.submit(run, target): target for target in ordered}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                error = future.exception()
                if error is not None:
                    failures.append(error)
                    for other in futures:  # no use loading the rest
                        other.cancel()
                elif progress is not None:
                    progress(futures[future].projection.name)
        if failures:
            raise failures[0]
        if progress is not None:
            progress("indexes")
    finally:
        drop_extract(db, source)
    return extracted
