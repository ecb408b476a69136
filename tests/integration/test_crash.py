"""SIGKILL mid-load: acknowledged writes survive, projections end up exactly-once.

A writer process (``tests.support.crash_writer``) grants and charges from several threads
and prints each acknowledged key; the test kills it with SIGKILL under load, restarts the
service on the same database and checks the log, the aggregates and the read models. Runs
on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import pytest

from infrastructure.readmodels.rebuild import verify
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from projections.ledger import ALL

ROOT = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 300
GRANT, CHARGE = 1_000, 700


def service_env(settings: Settings) -> dict[str, str]:
    """The ``DB_*`` variables of ``settings`` (for PostgreSQL the same as ``Cluster.env``)."""
    return {
        "DB_TYPE": settings.db.type,
        "DB_NAME": settings.db.name,
        "DB_HOST": settings.db.host,
        "DB_PORT": str(settings.db.port),
        "DB_USER": settings.db.user,
        "DB_PASSWORD": settings.db.password,
        "DATA_DIR": str(settings.db.data_dir),
    }


@dataclass
class Child:
    """A ``crash_writer`` process whose stdout lines are collected as they arrive."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings, **options: str) -> Child:
        env = {**os.environ, **service_env(settings), **options}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.crash_writer"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        child = cls(proc)
        child.readers = [
            threading.Thread(target=child._read, daemon=True),
            threading.Thread(target=child._read_stderr, daemon=True),
        ]
        for reader in child.readers:
            reader.start()
        return child

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                if line.endswith("\n"):  # a line cut by the kill was never acknowledged
                    self.lines.append(line.rstrip("\n"))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            self.err.extend(self.proc.stderr)

    @property
    def keys(self) -> list[str]:
        return [line for line in list(self.lines) if not line.startswith("#")]

    @property
    def errors(self) -> list[str]:
        return [line for line in list(self.lines) if line.startswith("#error")]

    def charges(self) -> int:
        return sum(1 for key in self.keys if key.startswith("c:"))

    def kill(self) -> None:
        """SIGKILL (if still running) and collect everything it printed."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=30)

    def stderr(self) -> str:
        return "".join(self.err)


def wait_until(condition: Callable[[], bool], children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for child in children:
            if child.proc.poll() is not None or child.errors:
                child.kill()
                pytest.fail(f"child ended early: {child.errors} {child.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail("the children did not make enough progress in time")
        time.sleep(0.02)


def assert_killed(child: Child) -> None:
    assert child.errors == []
    assert child.proc.returncode == -signal.SIGKILL, child.stderr()


@dataclass
class Logged:
    """What the event log holds, per account."""

    users: dict[UUID, str] = field(default_factory=dict)
    granted: dict[UUID, int] = field(default_factory=Counter)
    charged: dict[UUID, int] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    key_account: dict[str, UUID] = field(default_factory=dict)
    key_kind: dict[str, str] = field(default_factory=dict)
    money_events: int = 0


def read_log(container: Container) -> Logged:
    logged = Logged()
    position = 0
    while page := container.events.read(position, 5_000):
        for event in page:
            account = event.originator_id
            kind = event.name.rpartition(".")[2]
            if kind == "Opened":
                logged.users[account] = event.data["user_id"]
            elif kind in {"Granted", "Charged"}:
                key = event.data["key"]
                bucket = logged.granted if kind == "Granted" else logged.charged
                bucket[account] += int(event.data["amount"])
                logged.keys[key] += 1
                logged.key_account[key] = account
                logged.key_kind[key] = kind
                logged.money_events += 1
        position = page[-1].position
    return logged


def check_log_against_acks(container: Container, acked: list[str], writers: int) -> Logged:
    """Every acknowledged key is in the log once; the aggregates agree with the log."""
    logged = read_log(container)
    assert len(acked) == len(set(acked))
    assert [k for k in acked if logged.keys[k] != 1] == []  # acknowledged = durable, once
    assert [k for k, n in logged.keys.items() if n != 1] == []
    kinds = {"g": "Granted", "c": "Charged"}
    for key in acked:  # crash_writer keys are "{g|c}:{user}:{thread}:{i}"
        kind, user, _, _ = key.split(":")
        assert logged.key_kind[key] == kinds[kind]
        assert logged.users[logged.key_account[key]] == user
    # Written but not acknowledged: at most the one command in flight per writer thread.
    assert len(set(logged.keys) - set(acked)) <= writers
    for account, user in logged.users.items():
        view = container.ledger.account(user)
        assert view.account_id == account
        assert view.total_granted == logged.granted[account]
        assert view.total_charged == logged.charged[account]
        assert view.balance == logged.granted[account] - logged.charged[account]
        assert view.balance >= 0
    return logged


def check_read_models(container: Container, logged: Logged) -> None:
    container.runner.catch_up()
    assert container.runner.lag() == dict.fromkeys(container.runner.positions(), 0)
    for projection in ALL:
        result = verify(container.db, container.events, [projection])[0]
        assert result.ok, projection.name
        assert result.position == container.events.head()
    for user in logged.users.values():
        row = container.queries.balance(user)
        view = container.ledger.account(user)
        assert row is not None
        assert (row["balance"], row["total_granted"], row["total_charged"], row["version"]) == (
            view.balance,
            view.total_granted,
            view.total_charged,
            view.version,
        )
    assert container.queries.totals()["transactions"] == logged.money_events


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill(settings: Settings) -> None:
    threads = 6
    bootstrap(settings).close()  # schema and event tables exist before the child starts
    child = Child.start(
        settings,
        CRASH_PREFIX="w",
        CRASH_SHARED_USER="shared",
        CRASH_THREADS=str(threads),
        CRASH_GRANT=str(GRANT),
        CRASH_CHARGE=str(CHARGE),
    )
    try:
        wait_until(lambda: child.charges() >= ACKS_BEFORE_KILL, [child], timeout=60)
    finally:
        child.kill()
    assert_killed(child)

    container = bootstrap(settings)  # the restart
    try:
        logged = check_log_against_acks(container, child.keys, threads)
        assert "shared" in logged.users.values()
        # The restarted service writes on top of the recovered state.
        before = container.ledger.account("shared").balance
        assert container.ledger.charge("shared", 1, key="after-restart").applied
        assert container.ledger.account("shared").balance == before - 1
        logged = read_log(container)
        check_read_models(container, logged)
    finally:
        container.close()


@pytest.mark.slow
def test_projection_runners_killed_mid_way_apply_exactly_once(settings: Settings) -> None:
    """A writer running projections and a second projection runner are killed mid-load."""
    threads = 4
    observer = bootstrap(settings)
    try:
        fast = {"PROJECTION_POLL_INTERVAL": "0.05", "CRASH_PROJECTIONS": "1"}
        writer = Child.start(
            settings,
            CRASH_PREFIX="w",
            CRASH_SHARED_USER="shared",
            CRASH_THREADS=str(threads),
            CRASH_GRANT=str(GRANT),
            CRASH_CHARGE=str(CHARGE),
            **fast,
        )
        children = [writer]
        try:
            # Start-ups one at a time: concurrent bootstraps on PostgreSQL can collide in the
            # library's CREATE OR REPLACE FUNCTION ("tuple concurrently updated").
            wait_until(lambda: "#ready" in writer.lines, children, timeout=60)
            children.append(Child.start(settings, CRASH_THREADS="0", **fast))
            wait_until(lambda: "#ready" in children[1].lines, children, timeout=60)
            target = writer.charges() + ACKS_BEFORE_KILL  # writes while both runners run
            wait_until(
                lambda: (
                    writer.charges() >= target and min(observer.runner.positions().values()) > 0
                ),
                children,
                timeout=60,
            )
            time.sleep(0.2)  # let the runners be busy with a batch
        finally:
            for child in children:
                child.kill()
        for child in children:
            assert_killed(child)
        positions = observer.runner.positions()
        assert min(positions.values()) > 0  # the runners had really been projecting
    finally:
        observer.close()

    container = bootstrap(settings)  # the restart
    try:
        logged = check_log_against_acks(container, writer.keys, threads)
        check_read_models(container, logged)
    finally:
        container.close()
