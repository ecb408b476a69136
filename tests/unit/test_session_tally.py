"""SessionTally: per-caller request tallies the proxy flushes for usage sessions."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime

from domain.usage import Caller, SessionTally

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW_MICROS = int(NOW.timestamp()) * 1_000_000


def test_counts_fees_refunds_and_times_per_caller() -> None:
    tally = SessionTally()
    laptop = Caller("apikey:k1", "10.0.0.1", "curl/8")
    phone = Caller("apikey:k1", "192.0.2.4", "app/1")
    for _ in range(3):
        tally.count("ann", laptop, 1_000, "proxy_fees")
    tally.count("ann", laptop, 5_000, "model_fees")
    tally.refund("ann", laptop, 1_000, "proxy_fees")
    tally.count("ann", phone, 1_000, "proxy_fees")
    rows = {r["address"]: r for r in tally.drain(NOW)}
    assert not tally
    assert rows["10.0.0.1"]["requests"] == 4
    assert (rows["10.0.0.1"]["proxy_fees"], rows["10.0.0.1"]["model_fees"]) == (2_000, 5_000)
    assert rows["192.0.2.4"]["user_agent"] == "app/1"
    for row in rows.values():
        assert NOW_MICROS - 60_000_000 < row["first_at"] <= row["last_at"] <= NOW_MICROS
    assert tally.drain(NOW) == []


def test_a_user_agent_holding_a_card_number_is_dropped() -> None:
    tally = SessionTally()
    tally.count("ann", Caller("apikey:k1", "10.0.0.1", "x 4111 1111 1111 1111"), 0, "proxy_fees")
    [row] = tally.drain(NOW)
    assert row["user_agent"] == ""


def test_no_count_is_lost_while_another_thread_drains() -> None:
    tally = SessionTally()
    caller = Caller("apikey:k1", "10.0.0.1")
    drained: list[int] = []
    done = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:

        def drain() -> None:
            while not done.is_set():
                drained.extend(r["requests"] for r in tally.drain(NOW))

        drainer = threading.Thread(target=drain)
        drainer.start()
        for _ in range(50_000):
            tally.count("ann", caller, 1, "proxy_fees")
        done.set()
        drainer.join()
    finally:
        sys.setswitchinterval(switch)
    drained.extend(r["requests"] for r in tally.drain(NOW))
    assert sum(drained) == 50_000
