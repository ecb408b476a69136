"""The operator CLI against a real database: commands, output, errors, time travel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from domain.errors import SpendingLimitExceededError
from domain.money import micros_to_usd
from infrastructure.db.migrate import pending
from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import bootstrap, open_database
from interfaces.cli.admin import main
from projections.ledger import ALL as ALL_PROJECTIONS
from tests.conftest import FixedClock
from tests.support.pg import Cluster, env_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def admin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., int]:
    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env

    def run(*argv: str) -> int:
        return main(list(argv))

    assert run("migrate") == 0
    return run


def test_user_and_credit_commands(
    admin: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin("create-user", "ann@example.com", "s3cret-pass", "Ann") == 0
    assert admin("make-admin", "ann@example.com") == 0
    capsys.readouterr()
    assert admin("users", "--json") == 0
    users = json.loads(capsys.readouterr().out)
    assert [(u["email"], u["is_admin"]) for u in users] == [("ann@example.com", True)]

    assert admin("grant-credits", "ann@example.com", "12.50", "--idempotency-key", "k1") == 0
    assert admin("grant-credits", "ann@example.com", "12.50", "--idempotency-key", "k1") == 0
    capsys.readouterr()
    assert admin("balance", "ann@example.com", "--json") == 0
    balance = json.loads(capsys.readouterr().out)
    assert balance["credits_remaining"] == "12.500000"
    assert balance["credits_total"] == "12.500000"

    assert admin("set-limits", "ann@example.com", "60min=5.00", "--reason", "vip") == 0
    assert admin("guardrails-reset", "ann@example.com", "60min", "--reason", "ticket 42") == 0
    capsys.readouterr()
    assert admin("audit", "ann@example.com", "--json") == 0
    audit = json.loads(capsys.readouterr().out)
    names = [e["name"] for e in audit["events"]]
    assert names == ["Opened", "Granted", "LimitsSet", "WindowsReset"]
    assert audit["events"][3]["data"]["reason"] == "ticket 42"
    assert {e["action"] for e in audit["security_events"]} >= {"user.created", "role.admin_granted"}

    assert admin("guardrails-spending", "ann@example.com", "--json") == 0
    capsys.readouterr()
    assert admin("stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 1
    assert stats["granted_total"] == "12.500000"
    assert all(p["lag"] == 0 for p in stats["projections"].values())
    assert admin("verify-projections") == 0
    assert "MISMATCH" not in capsys.readouterr().out
    capsys.readouterr()
    assert admin("rebuild-projections") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"rebuilt {len(ALL_PROJECTIONS)} projection(s) from 4 events in ")
    assert summary.endswith(" events/s)")
    assert admin("verify-projections", "balances") == 0


def test_errors_are_one_line(admin: Callable[..., int], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        admin("balance", "nobody@example.com")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "No user with this email" in err
    for argv in (
        ("grant-credits", "x@example.com", "abc"),
        ("grant-credits", "x@example.com", "1.0000001"),
        ("balance", "x@example.com", "--at", "yesterday-ish"),
        ("guardrails-reset", "x@example.com", "7min", "--reason", "r"),
        ("guardrails-reset", "x@example.com"),
        ("rebuild-projections", "nope"),
        ("no-such-command",),
    ):
        with pytest.raises(SystemExit) as exit_info:
            admin(*argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


def test_bad_configuration_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "DB_TYPE": "oracle", "DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli.admin", "users"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "DB_TYPE" in done.stderr


def test_per_user_limits_are_enforced_with_the_switch_off(
    admin: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
) -> None:
    """GUARDRAILS_ENABLED=false (the default) governs only the env defaults: limits set for a
    user show in ``balance`` and the spending report and refuse a charge over them."""
    assert not settings.ledger.guardrails.enabled
    assert admin("create-user", "ann@example.com", "s3cret-pass", "Ann") == 0
    assert admin("grant-credits", "ann@example.com", "50.00", "--idempotency-key", "k1") == 0
    args = ("set-limits", "ann@example.com", "60min=10.00", "72h=100.00", "--reason", "vip")
    assert admin(*args) == 0
    capsys.readouterr()
    assert admin("balance", "ann@example.com", "--json") == 0
    balance = json.loads(capsys.readouterr().out)
    limits = {k: Decimal(v) for k, v in balance["limits"].items()}
    assert limits == {"60MIN": Decimal(10), "72H": Decimal(100)}
    assert admin("balance", "ann@example.com") == 0
    table = capsys.readouterr().out
    sixty = next(line for line in table.splitlines() if "60MIN" in line)
    assert "off" not in sixty
    assert "10" in sixty
    assert admin("guardrails-spending", "ann@example.com", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["guard_rails_enabled"] is True  # in force for this account
    assert set(report["limits"]) == {"60MIN", "72H"}

    c = bootstrap(settings)
    try:
        user = c.users.by_email("ann@example.com")
        c.ledger.charge(user.id, 6 * 1_000_000, key="c1")
        with pytest.raises(SpendingLimitExceededError) as refused:
            c.ledger.charge(user.id, 6 * 1_000_000, key="c2")  # 12.00 in 60 minutes > 10.00
        assert [v["window"] for v in refused.value.violations] == ["60MIN"]
        assert c.ledger.account(user.id).balance == 44 * 1_000_000
    finally:
        c.close()


def test_balance_at_equals_what_the_projection_said_then(
    settings: Settings,
    admin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Replay: `balance --at T` equals the live read model as it was at T."""
    clock = FixedClock(datetime.now(UTC) - timedelta(hours=2))
    c = bootstrap(settings, clock=clock)
    try:
        user = c.users.create("tim@example.com", "password-1", "Tim")
        c.ledger.grant(user.id, 50_000_000, key="g")
        snapshots = []
        for i in range(6):
            clock.advance(minutes=7)
            c.ledger.charge(user.id, 1_250_000 * (i + 1), key=f"c{i}")
            if i % 2 == 0:
                c.ledger.place_hold(
                    user.id,
                    f"h{i}",
                    500_000,
                    expires_at=clock.now + timedelta(hours=1),
                    key=f"h{i}",
                )
            c.runner.catch_up()
            snapshots.append((clock.now, c.queries.balance(user.id)))
            clock.advance(seconds=30)
    finally:
        c.close()
    for instant, live in snapshots:
        capsys.readouterr()
        assert admin("balance", "tim@example.com", "--at", instant.isoformat(), "--json") == 0
        replayed = json.loads(capsys.readouterr().out)
        assert live is not None
        assert replayed["credits_remaining"] == micros_to_usd(live["balance"])
        assert replayed["credits_held"] == micros_to_usd(live["held"])


def test_migrate_creates_a_missing_postgres_database(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    for key, value in pg_cluster.env(name).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0  # idempotent
    settings = load_settings(env_file=None)
    db = open_database(settings)
    try:
        assert pending(db) == []
    finally:
        db.close()


def test_statement(admin: Callable[..., int], capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime

    month = datetime.now(UTC).strftime("%Y-%m")
    assert admin("create-user", "st@example.com", "s3cret-pass", "St") == 0
    assert admin("grant-credits", "st@example.com", "20.00") == 0
    capsys.readouterr()
    assert admin("statement", "st@example.com", "--month", month, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["opening_balance"], data["grants"], data["closing_balance"]) == (
        "0.000000",
        "20.000000",
        "20.000000",
    )
    assert data["reconciles"] is True
    assert admin("statement", "st@example.com", "--month", month) == 0
    assert "closing_balance" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        admin("statement", "st@example.com", "--month", "2026-13")
