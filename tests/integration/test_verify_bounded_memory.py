"""``verify-projections`` compares read models in bounded memory (issue 24).

The checksums stream each table in full-row order a page at a time: the peak allocation
does not grow with the rows, the digest is the one a whole-table sort in Python gives,
and a tampered live row (changed, missing or extra) is still a mismatch.
"""

from __future__ import annotations

import hashlib
import tracemalloc
import uuid
from typing import Any

import pytest

from infrastructure.readmodels import ordered_rows
from infrastructure.readmodels import rebuild as rebuild_module
from infrastructure.readmodels.rebuild import rebuild, verify
from infrastructure.readmodels.store import (
    _normalise,
    checksum,
    create_generation,
    drop_generation,
    physical,
    read_state,
)
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from projections.ledger import ALL, BY_NAME
from tests.bench.scale_log import Shape, generate
from tests.support.pg import Cluster

USD = 1_000_000
TRANSACTIONS = BY_NAME["transactions"]
BALANCES = BY_NAME["balances"]


def _whole_table_digest(tx: Any, tables: tuple[str, ...], generation: int | str) -> str:
    """The digest as computed before issue 24: every row loaded, sorted in Python."""
    digest = hashlib.sha256()
    for table in tables:
        rows = tx.fetchall(f"SELECT * FROM {physical(table, generation)}")
        rows.sort(key=lambda r: tuple((v is None, v) for v in r))
        digest.update(table.encode())
        for row in rows:
            digest.update(repr(tuple(_normalise(v) for v in row)).encode())
    return digest.hexdigest()


def _fill(c: Container, generation: str, rows: int) -> None:
    """``rows`` transactions rows in a scratch generation, with text keys in mixed case."""
    with c.db.transaction() as tx:
        live = read_state(tx, TRANSACTIONS.name).generation
        create_generation(tx, TRANSACTIONS, live, generation)
        tx.executemany(
            f"INSERT INTO {physical('transactions', generation)} (position, account_id, version,"
            " kind, amount, hold_id, reason, reference, actor, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (n + 1, f"acct-{n % 97}", n, "grant", n * 7, "", "r" * 40, f"ref-{n}", "", n)
                for n in range(rows)
            ),
        )


def _peak_of_checksum(c: Container, generation: str) -> tuple[int, int]:
    with c.db.snapshot() as tx:
        tracemalloc.start()
        try:
            _, count = checksum(tx, TRANSACTIONS, generation)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return peak, count


def test_checksum_peak_memory_does_not_grow_with_rows(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ordered_rows, "PAGE", 500)
    small, large = 5_000, 20_000
    try:
        _fill(container, "memsmall", small)
        _fill(container, "memlarge", large)
        peak_small, rows_small = _peak_of_checksum(container, "memsmall")
        peak_large, rows_large = _peak_of_checksum(container, "memlarge")
    finally:
        with container.db.transaction() as tx:
            drop_generation(tx, TRANSACTIONS, "memsmall")
            drop_generation(tx, TRANSACTIONS, "memlarge")
    assert (rows_small, rows_large) == (small, large)
    # Loading whole tables made the large peak ~4x the small one; paging keeps it flat.
    assert peak_large < 1.5 * peak_small, (peak_small, peak_large)


def test_streamed_digest_equals_the_whole_table_sort(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ordered_rows, "PAGE", 3)  # many pages, keys crossing page ends
    ledger = container.ledger
    for user in ("a", "B", "Z", "b", "é", "ab", "A-1", "a_1", "Ω", "zz", "a"):
        ledger.grant(user, 10 * USD, key=f"g{user}")
        ledger.charge(user, USD, key=f"c{user}")
    container.runner.catch_up()
    with container.db.snapshot() as tx:
        for p in ALL:
            generation = read_state(tx, p.name).generation
            digest, _ = checksum(tx, p, generation)
            assert digest == _whole_table_digest(tx, p.tables, generation), p.name


TAMPER = {
    "changed": "UPDATE {t} SET balance = balance + 1 WHERE account_id = (SELECT MIN(account_id)"
    " FROM {t})",
    "missing": "DELETE FROM {t} WHERE account_id = (SELECT MAX(account_id) FROM {t})",
    "extra": "INSERT INTO {t} (account_id, user_id, balance) VALUES ('zz-extra', 'zz-extra', 5)",
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_a_tampered_live_row_is_a_mismatch(
    container: Container, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(ordered_rows, "PAGE", 2)
    ledger = container.ledger
    for u in range(5):
        ledger.grant(f"u{u}", 100 * USD, key="g")
        ledger.charge(f"u{u}", USD, key="c")
    container.runner.catch_up()
    assert all(v.ok for v in verify(container.db, container.events, ALL))
    with container.db.transaction() as tx:
        live = physical("balances", read_state(tx, BALANCES.name).generation)
        assert tx.execute(TAMPER[how].format(t=live)) == 1
    results = {v.name: v for v in verify(container.db, container.events, ALL)}
    assert [name for name, v in results.items() if not v.ok] == ["balances"]
    assert results["balances"].rows == {"changed": 5, "missing": 4, "extra": 6}[how]


def _peak_of_verify(pg_cluster: Cluster, events: int) -> int:
    """tracemalloc peak of ``verify`` over a generated log of ``events`` (rebuilt first)."""
    name = pg_cluster.create_database(f"vmem_{uuid.uuid4().hex[:10]}")
    c = bootstrap(load_settings(pg_cluster.env(name), env_file=None))
    try:
        shape = Shape(events=events, accounts=events // 100, whales=1, whale_events=events // 10)
        generate(c.app, pg_cluster.dsn(name), shape, snapshot_users=())
        rebuild(c.db, c.events, ALL)
        tracemalloc.start()
        try:
            results = verify(c.db, c.events, ALL)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert [v.name for v in results if not v.ok] == []
        assert max(v.rows for v in results) > events // 4  # the log reached the read models
        return peak
    finally:
        c.close()


def test_verify_peak_memory_does_not_grow_with_the_log(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (the generator COPYs into it): 4x the events, about the same peak."""
    monkeypatch.setattr(rebuild_module, "CHUNK", 500)
    monkeypatch.setattr(ordered_rows, "PAGE", 500)
    small = _peak_of_verify(pg_cluster, 4_000)
    large = _peak_of_verify(pg_cluster, 16_000)
    assert large < 1.5 * small, (small, large)
