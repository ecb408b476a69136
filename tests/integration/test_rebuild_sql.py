"""The set-based rebuild (PostgreSQL) against the Python folds, row for row.

The folds in ``projections/`` are the reference: every test builds the same generation both
ways (``fill_sql`` and ``fill``) and compares the ordered checksums of every table.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from domain.errors import DomainError
from domain.guardrails import WINDOW_NAMES
from infrastructure.readmodels.rebuild import Target, fill, fill_sql, rebuild, verify
from infrastructure.readmodels.rebuild_sql import STALE_AFTER_S, capable, translated
from infrastructure.readmodels.store import (
    all_states,
    checksum,
    create_generation,
    drop_generation,
    read_state,
)
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.cli.admin import main
from projections import instances, payments
from projections.base import folds
from projections.ledger import ALL, BY_NAME
from tests.conftest import FixedClock

USD = 1_000_000
LEDGER = ("balances", "transactions", "spending", "usage")


@pytest.fixture
def pg(pg_settings: Settings, clock: FixedClock) -> Iterator[Container]:
    c = bootstrap(pg_settings, clock=clock)
    try:
        yield c
    finally:
        c.close()


def _every_kind(c: Container, clock: FixedClock, prefix: str = "u") -> None:
    """Every CreditAccount event kind, over several accounts, across UTC days, with
    sub-second business times and text that needs JSON escaping."""
    ledger = c.ledger
    clock.advance(hours=11, minutes=58, microseconds=123_457)  # next: across midnight
    ledger.open_account(f"{prefix}-idle")  # an account with only ``Opened``
    for n in range(4):
        user = f"{prefix}{n}"
        ledger.grant(user, (50 + n) * USD, key=f"g{n}", reason='seed "quoted" ü\\n', actor="adm")
        ledger.charge(user, 1_234 + n, key=f"c{n}", reference=f"req-{n}", reason="é€😀")
        clock.advance(seconds=31, microseconds=999_999)
    ledger.place_hold(
        f"{prefix}0", "h1", USD, expires_at=clock.now + timedelta(minutes=3), key="h1"
    )
    ledger.capture(f"{prefix}0", "h1", USD // 4, key="cap1", reason="partial")
    ledger.capture(f"{prefix}0", "h1", USD // 8, key="cap2")
    ledger.release(f"{prefix}0", "h1", key="rel1", actor="ops")
    ledger.place_hold(
        f"{prefix}1", "h2", 2 * USD, expires_at=clock.now + timedelta(minutes=1), key="h2"
    )
    clock.advance(minutes=2, microseconds=1)
    ledger.expire_holds(f"{prefix}1")
    ledger.debit(f"{prefix}2", USD, key="d1", kind="refund", reference="re-1")
    ledger.set_cap(f"{prefix}2", 5 * USD, actor="admin", reason="trusted")
    ledger.set_cap(f"{prefix}2", 7 * USD, actor="admin")
    ledger.configure_auto_renew(
        f"{prefix}3",
        enabled=True,
        threshold=52 * USD,
        amount=10 * USD,
        payment_method="pm_card",
        actor="user",
    )
    ledger.charge(f"{prefix}3", 2 * USD, key="c-renew")  # below the threshold: triggers
    ledger.configure_auto_renew(
        f"{prefix}1", enabled=False, threshold=0, amount=0, payment_method="", actor="user"
    )
    ledger.set_limits(f"{prefix}0", {"60MIN": 5 * USD, "72H": 0}, actor="admin")
    ledger.set_limits(f"{prefix}0", {"72H": None, "5MIN": USD}, actor="admin")
    ledger.set_limits(f"{prefix}1", {"1440MIN": None}, actor="admin")
    ledger.reset_windows(f"{prefix}0", None, actor="admin", reason="all")
    clock.advance(hours=25, seconds=7)
    ledger.charge(f"{prefix}0", 999, key="c-late")
    ledger.reset_windows(f"{prefix}0", ["60MIN", "5MIN", "60MIN"], actor="admin", reason="x")
    ledger.reset_windows(f"{prefix}2", ["72H"], actor="admin", reason="y")
    ledger.grant(f"{prefix}2", USD, key="g-late", source="payment")


def _compare(c: Container, stops: dict[str, int] | None = None) -> dict[str, int]:
    """Fill scratch generations with both methods; assert equal checksums; return rows."""
    projections = list(ALL)
    with c.db.transaction() as tx:
        for p in projections:
            live = read_state(tx, p.name).generation
            create_generation(tx, p, live, "sqlt")
            create_generation(tx, p, live, "pyt")
    try:
        stops = stops or {}
        sql = fill_sql(c.db, c.events, [Target(p, "sqlt", stops.get(p.name)) for p in ALL])
        python = fill(c.db, c.events, [Target(p, "pyt", stops.get(p.name)) for p in ALL])
        if not stops:
            assert sql == python
        rows = {}
        with c.db.snapshot() as tx:
            for p in projections:
                ours, theirs = checksum(tx, p, "sqlt"), checksum(tx, p, "pyt")
                assert ours == theirs, p.name
                rows[p.name] = ours[1]
        return rows
    finally:
        with c.db.transaction() as tx:
            for p in projections:
                drop_generation(tx, p, "sqlt")
                drop_generation(tx, p, "pyt")


def test_every_event_kind_gives_the_same_rows(pg: Container, clock: FixedClock) -> None:
    assert capable(pg.db, pg.events)
    _every_kind(pg, clock)
    rows = _compare(pg)
    assert all(rows[name] > 0 for name in LEDGER)
    assert rows["payments"] == 1  # the auto-renew request, folded in Python
    pg.runner.catch_up()
    reports = rebuild(pg.db, pg.events, ALL, method="sql")
    assert {r.events for r in reports} == {pg.events.head()}
    assert {r.position for r in reports} == {pg.events.head()}
    for result in verify(pg.db, pg.events, ALL):  # the Python folds as the reference
        assert result.ok, result
    with pg.db.read() as tx:
        limits = tx.fetchall("SELECT window_name, amount FROM spending_limits ORDER BY 1")
        resets = tx.fetchall("SELECT count(*) FROM spending_resets")
    assert ("72H", -1) in limits
    assert resets[0][0] == len(WINDOW_NAMES) + 1


def test_rebuild_stopped_at_positions(pg: Container, clock: FixedClock) -> None:
    _every_kind(pg, clock)
    head = pg.events.head()
    for stop in (1, 5, head // 3, head // 2, head - 1):
        _compare(pg, dict.fromkeys(BY_NAME, stop))
    # each projection its own stop, as ``verify`` does with the live positions
    _compare(pg, {p.name: max(1, head - 3 * i) for i, p in enumerate(ALL)})


def test_verify_stops_at_the_live_positions(pg: Container, clock: FixedClock) -> None:
    _every_kind(pg, clock, prefix="a")
    pg.runner.catch_up()
    _every_kind(pg, clock, prefix="b")  # not caught up: live positions are behind the head
    live = {s.name: s.position for s in all_states(pg.db)}
    assert all(position < pg.events.head() for position in live.values())
    for method in ("sql", "python"):
        for result in verify(pg.db, pg.events, ALL, method=method):
            assert result.ok, (method, result)
            assert result.position == live[result.name]


def test_rebuild_after_live_runner_and_tail(pg: Container, clock: FixedClock) -> None:
    """The SQL fill, the tail under the locks, then the live runner: equal to a Python
    rebuild of the whole log."""
    _every_kind(pg, clock, prefix="a")
    pg.runner.catch_up()
    before = {s.name: s.generation for s in all_states(pg.db)}
    rebuild(pg.db, pg.events, ALL, method="sql")
    after = {s.name: s for s in all_states(pg.db)}
    assert all(after[name].generation == before[name] + 1 for name in before)
    assert {s.position for s in after.values()} == {pg.events.head()}
    _every_kind(pg, clock, prefix="b")
    pg.runner.catch_up()
    for result in verify(pg.db, pg.events, ALL):
        assert result.ok, result
    for name in LEDGER:
        (report,) = rebuild(pg.db, pg.events, [BY_NAME[name]], method="sql")
        assert report.position == pg.events.head()
    for result in verify(pg.db, pg.events, ALL):
        assert result.ok, result


def test_empty_log(pg: Container) -> None:
    assert _compare(pg) == dict.fromkeys(BY_NAME, 0)
    reports = rebuild(pg.db, pg.events, ALL, method="sql")
    assert {(r.position, r.events) for r in reports} == {(0, 0)}


def test_indexes_are_rebuilt_as_they_were(pg: Container, clock: FixedClock) -> None:
    _every_kind(pg, clock)

    def indexes(generation: int) -> set[tuple[str, str]]:
        with pg.db.read() as tx:
            rows = tx.fetchall(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE ?",
                (f"%_g{generation}",),
            )
        return {(str(n), re.sub(r"_g\d+", "_gN", str(d))) for n, d in rows}

    rebuild(pg.db, pg.events, ALL, method="python")
    by_python = indexes(2)
    rebuild(pg.db, pg.events, ALL, method="sql")
    by_sql = indexes(3)
    assert {(re.sub(r"_g\d+", "_gN", n), d) for n, d in by_sql} == {
        (re.sub(r"_g\d+", "_gN", n), d) for n, d in by_python
    }
    assert len(by_sql) >= 8  # primary keys of every table, transactions' account index


def test_fallbacks(
    pg: Container, sqlite_settings: Settings, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lite = bootstrap(sqlite_settings, clock=clock)
    try:
        assert not capable(lite.db, lite.events)
        with pytest.raises(ValueError, match="PostgreSQL"):
            rebuild(lite.db, lite.events, ALL, method="sql")
        lite.ledger.grant("u", USD, key="g")
        assert {r.events for r in rebuild(lite.db, lite.events, ALL)} == {2}
    finally:
        lite.close()
    assert capable(pg.db, pg.events)
    with monkeypatch.context() as patch:  # an application that compresses its events
        patch.setattr(pg.events, "_compressor", object())
        assert not capable(pg.db, pg.events)
        with pytest.raises(ValueError, match="PostgreSQL"):
            rebuild(pg.db, pg.events, ALL, method="sql")
    assert all(translated(BY_NAME[name]) for name in LEDGER)
    assert not any(translated(p) for p in ALL if p.name not in LEDGER)


def _like(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(c) if c not in "%_" else (".*" if c == "%" else ".") for c in pattern)
    return re.compile("".join(parts) + r"\Z")


def test_projections_read_only_what_they_fold(pg: Container, clock: FixedClock) -> None:
    """Every event a projection folds matches its ``events`` patterns (the server's ``LIKE``
    and the runner's test agree), so handing it only those loses no row."""
    patterns = {p.name: p.events for p in BY_NAME.values() if p.events is not None}
    assert _like(patterns["instances"][0]).match(instances.PREFIX + "Requested")
    assert _like(patterns["payments"][0]).match(payments.PREFIX + "Initiated")
    _every_kind(pg, clock)
    events = pg.events.read(0, 10_000)
    for name, own in patterns.items():
        fold, wants = BY_NAME[name].fold, folds(BY_NAME[name])
        assert wants is not None
        for event in events:
            like = any(_like(p).match(event.name) for p in own)
            assert wants(event.name) == like, (name, event.name)
            if list(fold(event)):
                assert like, (name, event.name)


def test_admin_cli_rebuild_then_verify(
    pg_settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = bootstrap(pg_settings, clock=clock)
    try:
        _every_kind(c, clock)
        c.runner.catch_up()
    finally:
        c.close()
    env = {
        "DB_TYPE": "postgres",
        "DB_HOST": pg_settings.db.host,
        "DB_PORT": str(pg_settings.db.port),
        "DB_USER": pg_settings.db.user,
        "DB_NAME": pg_settings.db.name,
        "DB_PASSWORD": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["rebuild-projections"]) == 0
    assert main(["verify-projections"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    assert out.count(" OK ") == len(ALL)
    assert main(["rebuild-projections", "spending", "--method", "python"]) == 0
    assert main(["verify-projections", "spending", "--method", "sql"]) == 0


# ----------------------------------------------------------------- property

Command = tuple[str, int, int, int]  # (kind, account, amount or window index, seconds later)
commands = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "grant",
                "charge",
                "hold",
                "capture",
                "release",
                "expire",
                "debit",
                "cap",
                "renew",
                "limits",
                "reset",
            ]
        ),
        st.integers(0, 2),
        st.integers(1, 3 * USD),
        st.integers(0, 50_000),
    ),
    min_size=1,
    max_size=25,
)


def _apply(c: Container, clock: FixedClock, prefix: str, command: Command) -> None:
    kind, n, amount, later = command
    user, ledger = f"{prefix}-{n}", c.ledger
    key = uuid.uuid4().hex
    clock.advance(seconds=later, microseconds=amount % 1_000_000)
    window = WINDOW_NAMES[amount % len(WINDOW_NAMES)]
    actions: dict[str, Callable[[], object]] = {
        "grant": lambda: ledger.grant(user, amount, key=key, reason=f"r{amount}"),
        "charge": lambda: ledger.charge(user, amount, key=key, reference=key[:6]),
        "hold": lambda: ledger.place_hold(
            user, f"h{n}", amount, expires_at=clock.now + timedelta(seconds=90), key=key
        ),
        "capture": lambda: ledger.capture(user, f"h{n}", max(1, amount // 10), key=key),
        "release": lambda: ledger.release(user, f"h{n}", key=key),
        "expire": lambda: ledger.expire_holds(user),
        "debit": lambda: ledger.debit(user, amount, key=key),
        "cap": lambda: ledger.set_cap(user, amount, actor="a"),
        "renew": lambda: ledger.configure_auto_renew(
            user,
            enabled=amount % 2 == 0,
            threshold=amount,
            amount=amount,
            payment_method="pm",
            actor="a",
        ),
        "limits": lambda: ledger.set_limits(
            user, {window: None if amount % 3 == 0 else amount}, actor="a"
        ),
        "reset": lambda: ledger.reset_windows(
            user, None if amount % 4 == 0 else [window], actor="a", reason="r"
        ),
    }
    with contextlib.suppress(DomainError):  # refused commands record nothing
        actions[kind]()


@hypothesis_settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(commands)
def test_random_command_sequences(
    pg: Container, clock: FixedClock, sequence: list[Command]
) -> None:
    prefix = uuid.uuid4().hex[:8]  # the database is shared by the examples
    for command in sequence:
        _apply(pg, clock, prefix, command)
    _compare(pg)


def test_a_dead_rebuilds_scratch_table_is_dropped_by_the_next(
    pg: Container, clock: FixedClock
) -> None:
    """A process killed between extract and drop leaves its unlogged extract behind; the next
    extract drops it once it is a day old, and leaves a younger one (maybe another rebuild's)."""
    _every_kind(pg, clock)
    now = int(time.time())
    old = f"rebuild_extract_{now - STALE_AFTER_S - 60}_{uuid.uuid4().hex}"
    young = f"rebuild_extract_{now - 600}_{uuid.uuid4().hex}"
    unstamped = f"rebuild_extract_{uuid.uuid4().hex}"  # named as before the stamps
    with pg.db.transaction() as tx:
        for name in (old, young, unstamped):
            tx.execute(f"CREATE UNLOGGED TABLE {name} (position BIGINT)")

    def scratch() -> set[str]:
        with pg.db.read() as tx:
            rows = tx.fetchall(
                "SELECT tablename FROM pg_tables WHERE starts_with(tablename, 'rebuild_extract_')"
            )
        return {str(r[0]) for r in rows}

    rebuild(pg.db, pg.events, ALL, method="sql")
    assert scratch() == {young}  # and the rebuild's own extract is gone too
    _compare(pg)
