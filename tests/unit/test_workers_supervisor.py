"""The worker supervisor's fault paths, with real forked processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from interfaces import workers
from interfaces.workers import Supervisor


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_workers_that_keep_dying_at_start_up_stop_the_server() -> None:
    supervisor = Supervisor(2, lambda: 1)  # every worker fails at once
    supervisor.restart_delay = 0.01
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 10
    assert supervisor.quick_deaths == workers.GIVE_UP_AFTER
    assert supervisor.workers == {}  # every worker reaped


def test_a_worker_that_ran_for_a_while_is_replaced_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(workers, "QUICK_DEATH_SECONDS", 0.0)  # every death counts as "long"
    starts = tmp_path / "starts"
    parent = os.getpid()

    def serve() -> int:
        with starts.open("a") as log:
            log.write(f"{os.getpid()}\n")
        if len(starts.read_text().split()) >= 4:  # the fourth start stops the whole server
            os.kill(parent, signal.SIGTERM)
            time.sleep(30)  # until the supervisor's SIGTERM ends it
        return 0

    supervisor = Supervisor(1, serve)
    supervisor.restart_delay = 60.0  # never waited for: no death was quick
    started = time.monotonic()
    assert supervisor.run() == 0
    assert time.monotonic() - started < 20
    pids = starts.read_text().split()
    assert len(pids) == 4
    assert len(set(pids)) == 4  # each one a new process
    assert supervisor.quick_deaths == 0
