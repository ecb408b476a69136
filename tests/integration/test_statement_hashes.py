"""Tamper-evident statements: hash chains recorded when a month ends, rechecked from the
event store by ``verify-statements`` (edited, deleted and reordered rows are each caught)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from domain.statement_chain import GENESIS
from infrastructure.eventstore.statement_hashes import StatementHashes, verify
from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from interfaces.cli.admin import main
from interfaces.statement_view import build_statement, statement_dict
from tests.conftest import FixedClock
from tests.support.pg import env_of


@pytest.fixture
def history(container: Container, clock: FixedClock) -> tuple[str, list[int]]:
    """A user with events in 2026-11 and 2026-12; both months' statements issued in 2027-01.
    Yields the user id and the versions of the November events."""
    user = container.users.create("chain@example.com", "password-1", "Chain")
    ledger = container.ledger
    ledger.grant(user.id, 50_000_000, key="g1", reason="promotion")
    clock.advance(days=3)
    ledger.charge(user.id, 1_250_000, key="c1", reference="gpu-a", reason="GPU time")
    clock.advance(days=5)
    ledger.charge(user.id, 2_500_000, key="c2", reference="gpu-b", reason="GPU time")
    clock.advance(days=25)  # December
    ledger.charge(user.id, 700_000, key="c3", reference="gpu-a", reason="GPU time")
    clock.advance(days=30)  # January 2027: both months have ended
    build_statement(container, user.id, "2026-11")
    build_statement(container, user.id, "2026-12")
    versions = [v for v, _ in StatementHashes(container.db).recorded(user.id, "2026-11")[0].links]
    return user.id, versions


def _tamper(container: Container, sql: str, *params: Any) -> None:
    recorder: Any = container.app.recorder
    table = recorder.events_table_name
    if container.settings.db.type != "sqlite":
        sql = sql.replace("?", "%s")
    with recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(sql.format(table=table), params)


def _state(container: Container, version: int) -> bytes:
    recorder: Any = container.app.recorder
    for stored in recorder.select_events(_aid(container)):
        if stored.originator_version == version:
            return bytes(stored.state)
    raise AssertionError(version)


def _aid(container: Container) -> Any:
    from domain.credits import account_id_for

    return account_id_for(container.users.by_email("chain@example.com").id)


def _problems(container: Container, user_id: str) -> list[str | None]:
    return [v.problem for v in verify(container.app, StatementHashes(container.db), user_id, None)]


def test_statements_chain_month_to_month(
    container: Container, history: tuple[str, list[int]]
) -> None:
    user_id, versions = history
    november = build_statement(container, user_id, "2026-11")
    december = build_statement(container, user_id, "2026-12")
    assert november.opening_hash == GENESIS
    assert december.opening_hash == november.closing_hash != december.closing_hash
    assert len(versions) >= 3
    shown = statement_dict(user_id, december)
    assert (shown["opening_hash"], shown["closing_hash"]) == (
        november.closing_hash,
        december.closing_hash,
    )
    assert _problems(container, user_id) == [None, None]


def test_edited_event_is_named(container: Container, history: tuple[str, list[int]]) -> None:
    user_id, versions = history
    target = versions[-1]  # the 2.50 charge
    state = json.loads(_state(container, target))
    state["amount"] = 1
    encoded = json.dumps(state, separators=(",", ":")).encode()
    _tamper(
        container,
        "UPDATE {table} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        encoded,
        _key(container),
        target,
    )
    problems = _problems(container, user_id)
    expected = f"2026-11: event version {target} (CreditAccount.Charged) no longer matches"
    assert problems[0] == expected
    assert problems[1] is not None  # December chains from November's closing hash


def test_deleted_event_is_named(container: Container, history: tuple[str, list[int]]) -> None:
    user_id, versions = history
    target = versions[1]
    _tamper(
        container,
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?",
        _key(container),
        target,
    )
    problems = _problems(container, user_id)
    assert problems[0] is not None
    assert problems[0].startswith(f"2026-11: event version {target} is missing")


def test_reordered_events_are_named(container: Container, history: tuple[str, list[int]]) -> None:
    user_id, versions = history
    first, second = versions[-2], versions[-1]
    a, b = _state(container, first), _state(container, second)
    update = "UPDATE {table} SET state = ? WHERE originator_id = ? AND originator_version = ?"
    _tamper(container, update, b, _key(container), first)
    _tamper(container, update, a, _key(container), second)
    problems = _problems(container, user_id)
    assert problems[0] is not None
    assert f"2026-11: event version {first} " in problems[0]


def _key(container: Container) -> Any:
    aid = _aid(container)
    return aid.hex if container.settings.db.type == "sqlite" else aid  # SQLite stores uuid.hex


@pytest.fixture
def admin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., int]:
    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return lambda *argv: main(list(argv))


def test_verify_statements_cli_exits_1_naming_the_event(
    container: Container,
    history: tuple[str, list[int]],
    admin: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, versions = history
    assert admin("verify-statements", "chain@example.com", "--json") == 0
    clean = json.loads(capsys.readouterr().out)
    assert [(v["month"], v["problem"]) for v in clean] == [("2026-11", None), ("2026-12", None)]
    assert admin("statement", "chain@example.com", "--month", "2026-11", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["closing_hash"] == clean[0]["closing_hash"]
    assert admin("statement", "chain@example.com", "--month", "2026-11") == 0
    assert f"closing hash {shown['closing_hash']}" in capsys.readouterr().out

    _tamper(
        container,
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?",
        _key(container),
        versions[0],
    )
    assert admin("verify-statements", "--month", "2026-11") == 1
    out = capsys.readouterr().out
    assert f"event version {versions[0]} is missing" in out
