"""An election asked from several threads at once holds its lock on one connection only."""

from __future__ import annotations

import threading

import psycopg
import pytest

from infrastructure.jobs.election import PgElection
from tests.support.pg import Cluster

pytestmark = pytest.mark.postgres
KEY = 7_420_099


def _sessions_holding(cluster: Cluster) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
            (KEY,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_concurrent_askers_share_one_session_and_closing_hands_over(pg_cluster: Cluster) -> None:
    for _ in range(10):
        first, second = PgElection(pg_cluster.dsn(), KEY), PgElection(pg_cluster.dsn(), KEY)
        barrier = threading.Barrier(6)
        answers: list[bool] = []

        def ask(
            election: PgElection = first,
            gate: threading.Barrier = barrier,
            out: list[bool] = answers,
        ) -> None:
            gate.wait()
            out.append(election.leading())

        threads = [threading.Thread(target=ask) for _ in range(6)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert answers == [True] * 6
            assert _sessions_holding(pg_cluster) == 1  # no second connection kept the lock
            first.close()
            assert second.leading()  # nothing left behind holds it
        finally:
            first.close()
            second.close()
